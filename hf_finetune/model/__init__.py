"""Model: any timm source -> classifier with a new head, reused rows, freezing, parameter groups, EMA."""
