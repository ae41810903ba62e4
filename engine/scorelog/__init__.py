"""The Parquet scoring log and the comparison of its models."""
