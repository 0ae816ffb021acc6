"""whatsorder: WhatsApp orders whose webhooks take effect exactly once."""
