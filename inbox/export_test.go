package inbox

// SetCleanupBatch lowers the rows one cleanup statement deletes, so tests
// can exercise the batching loop with a few rows.
func SetCleanupBatch(i *Inbox, n int) { i.cleanupBatch = n }
