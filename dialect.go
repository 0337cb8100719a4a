package accord

import (
	"database/sql"
	"errors"
	"fmt"
	neturl "net/url"
	"strings"

	"github.com/go-sql-driver/mysql"
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
	// MySQL is MySQL 8 or MariaDB 10.6 or newer, through
	// github.com/go-sql-driver/mysql (database/sql driver "mysql"). The
	// relay polls it. DDL is not transactional on MySQL: a migration that
	// fails half-way must be repaired by hand.
	MySQL Dialect = "mysql"
)

// ErrUnknownDialect is returned for a dialect or database URL scheme that
// Accord does not support.
var ErrUnknownDialect = errors.New("accord: unknown SQL dialect")

// Validate reports whether d is a supported dialect.
func (d Dialect) Validate() error {
	switch d {
	case Postgres, SQLite, MySQL:
		return nil
	case "":
		return fmt.Errorf("%w: dialect is empty (want %q, %q or %q)", ErrUnknownDialect, Postgres, MySQL, SQLite)
	default:
		return fmt.Errorf("%w: %q (want %q, %q or %q)", ErrUnknownDialect, string(d), Postgres, MySQL, SQLite)
	}
}

// DriverName is the database/sql driver name Accord uses for d.
func (d Dialect) DriverName() string {
	switch d {
	case Postgres:
		return "pgx"
	case SQLite:
		return "sqlite"
	case MySQL:
		return "mysql"
	}
	return ""
}

// ParseDatabaseURL returns the dialect and the database/sql data source name
// for a database URL:
//
//   - postgres://... or postgresql://...  → [Postgres]
//   - mysql://user:password@host:port/database?param=value → [MySQL]
//     (also for MariaDB; parseTime and multiStatements are turned on)
//   - sqlite:///path/to/file.db or sqlite://file.db or file:path.db → [SQLite]
//
// Anything else is an error wrapping [ErrUnknownDialect].
func ParseDatabaseURL(url string) (Dialect, string, error) {
	switch {
	case strings.HasPrefix(url, "postgres://"), strings.HasPrefix(url, "postgresql://"):
		return Postgres, url, nil
	case strings.HasPrefix(url, "mysql://"), strings.HasPrefix(url, "mariadb://"):
		dsn, err := mysqlDSN(url)
		if err != nil {
			return "", "", err
		}
		return MySQL, dsn, nil
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
	return "", "", fmt.Errorf("%w: database URL scheme %q (want postgres://, mysql://, sqlite:// or file:)", ErrUnknownDialect, scheme)
}

// mysqlDSN turns mysql://user:pass@host:port/db?k=v into the driver's DSN.
func mysqlDSN(raw string) (string, error) {
	u, err := neturl.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("%w: bad mysql URL: %v", ErrUnknownDialect, err)
	}
	cfg := mysql.NewConfig()
	cfg.Net = "tcp"
	cfg.Addr = u.Host
	if u.Port() == "" {
		cfg.Addr = u.Hostname() + ":3306"
	}
	if u.User != nil {
		cfg.User = u.User.Username()
		cfg.Passwd, _ = u.User.Password()
	}
	cfg.DBName = strings.TrimPrefix(u.Path, "/")
	cfg.ParseTime = true
	cfg.MultiStatements = true
	if q := u.Query(); len(q) > 0 {
		cfg.Params = map[string]string{}
		for k, v := range q {
			cfg.Params[k] = v[0]
		}
	}
	return cfg.FormatDSN(), nil
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
// For PostgreSQL and MySQL it keeps up to [OpenDBMaxIdleConns] idle
// connections: with database/sql's default of 2, a relay (reader, two
// deleters, lease loop) closes and reopens connections under load.
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
	} else {
		db.SetMaxIdleConns(OpenDBMaxIdleConns)
	}
	return db, d, nil
}

// OpenDBMaxIdleConns is the idle connection limit [OpenDB] sets on
// PostgreSQL and MySQL pools.
const OpenDBMaxIdleConns = 8
