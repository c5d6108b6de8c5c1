"""Bronze → silver → gold on Spark: landed logs to typed events, interactions, profiles."""
