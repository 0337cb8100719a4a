// Package sqlstore holds every SQL statement Accord runs, per dialect, and
// the validation of the identifiers (schema, table prefix) that come from
// configuration. No other package builds SQL.
package sqlstore

import (
	"errors"
	"fmt"
	"hash/fnv"
	"regexp"

	"github.com/accordgo/accord"
)

// MaxIdentifierLength is PostgreSQL's identifier limit (NAMEDATALEN-1).
// PostgreSQL silently truncates longer names, which could make two tables
// collide, so Accord rejects them instead. The same limit is applied to
// every dialect so that a configuration is portable.
const MaxIdentifierLength = 63

// ErrInvalidIdentifier is returned for a schema or table prefix that is not
// a safe SQL identifier.
var ErrInvalidIdentifier = errors.New("invalid SQL identifier")

var identRe = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)

// tableSuffixes are the tables derived from the prefix; the longest decides
// the longest allowed prefix.
var tableSuffixes = []string{"migration", "outbox", "outbox_notify", "outbox_topic_length", "dead_letter_consumer", "replica_position", "replica_parked_at", "inbox_received_at", "outbox_dead_key", "relay_instance", "relay_lease_slot"}

// Names holds the validated, quoted identifiers of one Accord installation.
type Names struct {
	Dialect accord.Dialect
	Schema  string // unquoted; empty means the connection's default (search_path)
	Prefix  string // unquoted table prefix
}

// NewNames validates schema and prefix for dialect d. field names the
// configuration fields in error messages ("Schema", "TablePrefix").
func NewNames(d accord.Dialect, schema, prefix string) (Names, error) {
	var errs []error
	if err := d.Validate(); err != nil {
		errs = append(errs, err)
	}
	if schema != "" {
		if d == accord.SQLite {
			errs = append(errs, fmt.Errorf("%w: Schema %q: sqlite has no schemas, leave Schema empty", ErrInvalidIdentifier, schema))
		} else if err := validIdent("Schema", schema); err != nil {
			errs = append(errs, err)
		}
	}
	if prefix != "" {
		if err := validIdent("TablePrefix", prefix); err != nil {
			errs = append(errs, err)
		}
	}
	for _, s := range tableSuffixes {
		if n := len(prefix) + len(s); n > MaxIdentifierLength {
			errs = append(errs, fmt.Errorf("%w: TablePrefix %q makes table name %q of %d bytes, over the %d-byte limit",
				ErrInvalidIdentifier, prefix, prefix+s, n, MaxIdentifierLength))
			break
		}
	}
	if len(errs) > 0 {
		return Names{}, errors.Join(errs...)
	}
	return Names{Dialect: d, Schema: schema, Prefix: prefix}, nil
}

func validIdent(field, s string) error {
	if len(s) > MaxIdentifierLength {
		return fmt.Errorf("%w: %s %q is %d bytes, over the %d-byte limit", ErrInvalidIdentifier, field, s, len(s), MaxIdentifierLength)
	}
	if !identRe.MatchString(s) {
		return fmt.Errorf("%w: %s %q: use lowercase letters, digits and underscores, starting with a letter or underscore", ErrInvalidIdentifier, field, s)
	}
	return nil
}

// Table returns the quoted, schema-qualified name of table suffix (for
// example "outbox").
func (n Names) Table(suffix string) string {
	t := n.Quote(n.Prefix + suffix)
	if n.Schema != "" {
		return n.Quote(n.Schema) + "." + t
	}
	return t
}

// Quote quotes a validated identifier for the dialect (backticks on MySQL,
// double quotes elsewhere).
func (n Names) Quote(ident string) string {
	if n.Dialect == accord.MySQL {
		return "`" + ident + "`"
	}
	return `"` + ident + `"`
}

// Outbox is the quoted outbox table.
func (n Names) Outbox() string { return n.Table("outbox") }

// Migration is the quoted migration version table.
func (n Names) Migration() string { return n.Table("migration") }

// Channel is the LISTEN/NOTIFY channel the outbox trigger notifies on
// PostgreSQL. It is derived from validated identifiers only.
// Channel names longer than PostgreSQL's limit are replaced by a hash.
func (n Names) Channel() string {
	c := n.Prefix + "outbox"
	if n.Schema != "" {
		c = n.Schema + "." + c
	}
	if len(c) > MaxIdentifierLength {
		h := fnv.New64a()
		h.Write([]byte(c))
		c = fmt.Sprintf("accord_outbox_%016x", h.Sum64())
	}
	return c
}

// ValidIdent validates one identifier that comes from configuration (a
// table or column name); field names the setting in the error.
func ValidIdent(field, s string) error {
	if s == "" {
		return fmt.Errorf("%w: %s is empty", ErrInvalidIdentifier, field)
	}
	return validIdent(field, s)
}
