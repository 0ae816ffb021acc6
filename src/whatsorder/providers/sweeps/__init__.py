"""What the payment providers know of payments and refunds, asked through their SDKs, as
payment events in our terms: what the reconciliation sweeper applies (issue #17).

- `stripe_sweep`: PaymentIntents and Refunds;
- `razorpay_sweep`: Payments and Refunds.
"""
