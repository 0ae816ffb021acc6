"""What the outbox sends and how it decides: the forms a message leaves in (`forms`), the
approved templates (`templates`) and the send-time decision (`decision`).

Imports nothing of the database or the web layer, so the providers' senders can use it.
"""
