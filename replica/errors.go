package replica

import (
	"errors"
	"fmt"
)

var (
	// ErrInvalidConfig wraps every configuration problem reported by [New].
	ErrInvalidConfig = errors.New("accord replica: invalid config")

	// ErrInvalidChange is returned for a change that cannot be applied as
	// given (empty or oversized key, negative version, an origin or message
	// id that cannot be stored, no message in BySequence mode). Nothing is
	// written when it is returned, and retrying the same change cannot
	// succeed. [IsInvalidChange] also matches ErrMissingKey,
	// ErrMissingVersion and ErrMissingTimestamp.
	ErrInvalidChange = errors.New("accord replica: invalid change")

	// ErrMissingKey is returned for a change without a key, and by
	// [ChangeFromMessage] for a message without accord_key metadata.
	ErrMissingKey = errors.New("accord replica: change has no key")

	// ErrMissingVersion is returned in ByVersion and BySequence mode for a
	// change without a version (zero), for example from a message without
	// accord_version metadata: the producer must set outbox.Event.Version.
	ErrMissingVersion = errors.New("accord replica: change has no version")

	// ErrMissingTimestamp is returned in ByTimestamp mode for a change
	// without a timestamp, for example from a message without
	// accord_created_at metadata.
	ErrMissingTimestamp = errors.New("accord replica: change has no timestamp")

	// ErrGap is returned, with the outcome Rejected, by a ByVersion replica
	// with the Reject gap policy for a change whose predecessors have not
	// been applied yet. Nothing was applied: return the error from the
	// message handler so that the broker redelivers the change later, after
	// the missing versions.
	ErrGap = errors.New("accord replica: versions missing before this change")
)

// IsInvalidChange reports whether err means that a change was refused
// before anything was written because of the change itself (see
// [ErrInvalidChange]). Retrying the same change cannot succeed.
func IsInvalidChange(err error) bool {
	return errors.Is(err, ErrInvalidChange) || errors.Is(err, ErrMissingKey) ||
		errors.Is(err, ErrMissingVersion) || errors.Is(err, ErrMissingTimestamp)
}

// IsGap reports whether err means that a change was rejected because
// versions before it are missing (see [ErrGap]). Retrying later, after the
// missing versions, succeeds.
func IsGap(err error) bool { return errors.Is(err, ErrGap) }

func invalidChange(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidChange, fmt.Sprintf(format, args...))
}
