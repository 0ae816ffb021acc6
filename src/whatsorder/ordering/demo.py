"""The demo catalogue ``make run`` and ``whatsorder seed-demo`` load: staples priced in paise."""

from __future__ import annotations

from whatsorder.ordering.model import Product

DEMO_CATALOGUE = (
    Product(
        sku="ATTA-5KG", name="Whole wheat atta, 5 kg", unit_price=26_500, currency="INR", stock=200
    ),
    Product(sku="TOOR-1KG", name="Toor dal, 1 kg", unit_price=16_000, currency="INR", stock=300),
    Product(
        sku="RICE-5KG", name="Sona masoori rice, 5 kg", unit_price=42_000, currency="INR", stock=150
    ),
    Product(
        sku="OIL-1L", name="Sunflower oil, 1 litre", unit_price=15_500, currency="INR", stock=250
    ),
    Product(sku="SUGAR-1KG", name="Sugar, 1 kg", unit_price=4_800, currency="INR", stock=400),
)
