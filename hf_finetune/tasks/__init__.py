"""Tasks: what differs between kinds of classification (loss, activation, decision, metrics, TTA)."""
