"""Data: readers, fetch, preprocessing, features, splits and Grain pipelines."""
