"""Dynamic batching: requests (counted by rows) into batches, results split back."""
