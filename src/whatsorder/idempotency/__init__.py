"""The idempotency engine under its former name: ``whatsorder_idempotency`` is its home now.

The engine ships as a distribution of its own (``engine/`` in this repository); whatsorder
depends on it. Code written against ``whatsorder.idempotency`` keeps working: this package
re-exports the engine's public names, and each engine submodule is registered under the old
name too (``whatsorder.idempotency.stores.sql`` *is* ``whatsorder_idempotency.stores.sql``), so
there is one module object per module and ``isinstance`` holds across both names.
"""

import importlib
import pkgutil
import sys

import whatsorder_idempotency
from whatsorder_idempotency import *  # noqa: F403  (the engine's public names, unchanged)
from whatsorder_idempotency import __all__ as __all__

for _found in pkgutil.walk_packages(
    whatsorder_idempotency.__path__, prefix=f"{whatsorder_idempotency.__name__}."
):
    _module = importlib.import_module(_found.name)
    _old_name = __name__ + _found.name[len(whatsorder_idempotency.__name__) :]
    sys.modules.setdefault(_old_name, _module)
