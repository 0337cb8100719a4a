package accord

import (
	"database/sql"
	"errors"
	"fmt"
	"strings"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
	_ "modernc.org/sqlite"             // registers the "sqlite" database/sql driver
)

// Dialect names the SQL database an outbox lives in. It selects the schema
// migrations and the SQL the outbox writer and the relay use.
type Dialect string

const (
	// Postgres is PostgreSQL 13 or newer, through pgx (database/sql driver
	// "pgx", or pgx.Tx directly). It is the primary target: the relay wakes up
	// on commit through LISTEN/NOTIFY.
	Postgres Dialect = "postgres"
	// SQLite is the embedded default, through modernc.org/sqlite (pure Go,
	// database/sql driver "sqlite"). The relay polls it.
	SQLite Dialect = "sqlite"
)

// ErrUnknownDialect is returned for a dialect or database URL scheme that
// Accord does not support.
var ErrUnknownDialect = errors.New("accord: unknown SQL dialect")

// Validate reports whether d is a supported dialect.
func (d Dialect) Validate() error {
	switch d {
	case Postgres, SQLite:
		return nil
	case "":
		return fmt.Errorf("%w: dialect is empty (want %q or %q)", ErrUnknownDialect, Postgres, SQLite)
	default:
		return fmt.Errorf("%w: %q (want %q or %q)", ErrUnknownDialect, string(d), Postgres, SQLite)
	}
}

// DriverName is the database/sql driver name Accord uses for d.
func (d Dialect) DriverName() string {
	switch d {
	case Postgres:
		return "pgx"
	case SQLite:
		return "sqlite"
	}
	return ""
}

// ParseDatabaseURL returns the dialect and the database/sql data source name
// for a database URL:
//
//   - postgres://... or postgresql://...  → [Postgres]
//   - sqlite:///path/to/file.db or sqlite://file.db or file:path.db → [SQLite]
//
// Anything else is an error wrapping [ErrUnknownDialect].
func ParseDatabaseURL(url string) (Dialect, string, error) {
	switch {
	case strings.HasPrefix(url, "postgres://"), strings.HasPrefix(url, "postgresql://"):
		return Postgres, url, nil
	case strings.HasPrefix(url, "sqlite://"):
		dsn := strings.TrimPrefix(url, "sqlite://")
		if dsn == "" {
			return "", "", fmt.Errorf("%w: sqlite URL %q has no file path", ErrUnknownDialect, url)
		}
		return SQLite, sqliteDSN(dsn), nil
	case strings.HasPrefix(url, "file:"):
		return SQLite, sqliteDSN(url), nil
	case url == "":
		return "", "", fmt.Errorf("%w: database URL is empty", ErrUnknownDialect)
	}
	scheme := url
	if i := strings.Index(url, ":"); i >= 0 {
		scheme = url[:i]
	}
	return "", "", fmt.Errorf("%w: database URL scheme %q (want postgres://, sqlite:// or file:)", ErrUnknownDialect, scheme)
}

// sqliteDSN adds the pragmas Accord needs (WAL, a busy timeout, foreign keys)
// unless the caller already set them.
func sqliteDSN(dsn string) string {
	add := func(dsn, pragma string) string {
		if strings.Contains(dsn, pragma) {
			return dsn
		}
		sep := "?"
		if strings.Contains(dsn, "?") {
			sep = "&"
		}
		return dsn + sep + "_pragma=" + pragma
	}
	dsn = add(dsn, "busy_timeout(10000)")
	dsn = add(dsn, "journal_mode(WAL)")
	return dsn
}

// OpenDB opens a database/sql pool for a database URL (see
// [ParseDatabaseURL]) and returns it with its dialect. For SQLite it limits
// the pool to one writer connection, which is what SQLite allows anyway.
func OpenDB(url string) (*sql.DB, Dialect, error) {
	d, dsn, err := ParseDatabaseURL(url)
	if err != nil {
		return nil, "", err
	}
	db, err := sql.Open(d.DriverName(), dsn)
	if err != nil {
		return nil, "", fmt.Errorf("accord: open %s database: %w", d, err)
	}
	if d == SQLite {
		db.SetMaxOpenConns(1)
	}
	return db, d, nil
}
