"""Tracking: open pixels, click redirects and unsubscribe links in the messages we deliver,
and the endpoints that record what recipients do with them."""
