"""Target connectors: one module per system, each a small class declaring typed operations.

``base.Connector`` holds what every connector shares (operation declarations, argument
validation, dispatch); ``registry.CONNECTORS`` maps config names to classes.
"""
