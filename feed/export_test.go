package feed

// Waiting returns the number of reads of s blocked in a long poll.
func Waiting(s *Source) int64 { return s.waiting.Load() }
