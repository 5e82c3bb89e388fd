"""Everything about samples: reading records (`records`), checking them (`validation`, and the `check` command),
rendering conversations and masking their labels (`preprocess`), and the dataset and collator (`dataset`)."""
