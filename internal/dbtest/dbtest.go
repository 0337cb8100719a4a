// Package dbtest gives Accord's tests isolated, migrated databases on the
// real servers of the machine: a fresh PostgreSQL schema per test, a fresh
// SQLite file per test. A missing server fails the test with a message that
// says how to point the tests at one; tests never skip silently.
package dbtest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/migrate"
)

// PostgresURLDefault is used when ACCORD_TEST_DATABASE_URL is not set.
const PostgresURLDefault = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// MySQLURLDefault is used when ACCORD_TEST_MYSQL_URL is not set (MariaDB
// or MySQL).
const MySQLURLDefault = "mysql://root@127.0.0.1:3306/test"

// MySQLURL returns the URL of the test MySQL/MariaDB database.
func MySQLURL() string {
	if u := os.Getenv("ACCORD_TEST_MYSQL_URL"); u != "" {
		return u
	}
	return MySQLURLDefault
}

// NATSURLDefault is used when ACCORD_TEST_NATS_URL is not set.
const NATSURLDefault = "nats://127.0.0.1:4222"

// RabbitMQURLDefault is used when ACCORD_TEST_AMQP_URL is not set.
const RabbitMQURLDefault = "amqp://guest:guest@127.0.0.1:5672/"

// RedisURLDefault is used when ACCORD_TEST_REDIS_URL is not set.
const RedisURLDefault = "redis://127.0.0.1:6379/0"

// RabbitMQURL returns the URL of the test RabbitMQ server (an AMQP 0-9-1
// URL without query parameters).
func RabbitMQURL() string {
	if u := os.Getenv("ACCORD_TEST_AMQP_URL"); u != "" {
		return u
	}
	return RabbitMQURLDefault
}

// RedisURL returns the URL of the test Redis server (5.0 or later, for
// streams; a URL without query parameters).
func RedisURL() string {
	if u := os.Getenv("ACCORD_TEST_REDIS_URL"); u != "" {
		return u
	}
	return RedisURLDefault
}

// PostgresURL returns the URL of the test PostgreSQL database.
func PostgresURL() string {
	if u := os.Getenv("ACCORD_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return PostgresURLDefault
}

// NATSURL returns the URL of the test NATS server (JetStream enabled).
func NATSURL() string {
	if u := os.Getenv("ACCORD_TEST_NATS_URL"); u != "" {
		return u
	}
	return NATSURLDefault
}

var (
	pgOnce sync.Once
	pgDB   *sql.DB
	pgErr  error
)

// Postgres returns the process-wide pool on the test database, failing t
// with instructions when the server cannot be reached.
func Postgres(t testing.TB) *sql.DB {
	t.Helper()
	pgOnce.Do(func() {
		pgDB, _, pgErr = accord.OpenDB(PostgresURL())
		if pgErr != nil {
			return
		}
		pgDB.SetMaxOpenConns(40)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		pgErr = pgDB.PingContext(ctx)
	})
	if pgErr != nil {
		t.Fatalf("PostgreSQL is not reachable at %s: %v\n"+
			"Start it (scripts/test.sh does) or point ACCORD_TEST_DATABASE_URL at a database.", PostgresURL(), pgErr)
	}
	return pgDB
}

var (
	myOnce sync.Once
	myDB   *sql.DB
	myErr  error
)

// MySQL returns the process-wide pool on the test MySQL/MariaDB database,
// failing t with instructions when the server cannot be reached.
func MySQL(t testing.TB) *sql.DB {
	t.Helper()
	myOnce.Do(func() {
		myDB, _, myErr = accord.OpenDB(MySQLURL())
		if myErr != nil {
			return
		}
		myDB.SetMaxOpenConns(40)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		myErr = myDB.PingContext(ctx)
	})
	if myErr != nil {
		t.Fatalf("MySQL/MariaDB is not reachable at %s: %v\n"+
			"Start it (scripts/test.sh does) or point ACCORD_TEST_MYSQL_URL at a database.", MySQLURL(), myErr)
	}
	return myDB
}

// MySQLSchema creates a fresh database on the test MySQL/MariaDB server,
// migrates it up and drops it when the test ends.
func MySQLSchema(t testing.TB) Env {
	t.Helper()
	db := MySQL(t)
	schema := RandomName("t_")
	m, err := migrate.New(db, &migrate.Config{Dialect: accord.MySQL, Schema: schema})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Migrate(context.Background(), migrate.Up, nil); err != nil {
		t.Fatalf("migrate database %s: %v", schema, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := db.ExecContext(ctx, "DROP DATABASE IF EXISTS `"+schema+"`"); err != nil {
			t.Logf("drop database %s: %v", schema, err)
		}
	})
	return Env{DB: db, Dialect: accord.MySQL, URL: MySQLURL(), Schema: schema}
}

// RandomName returns prefix followed by 12 random hex characters.
func RandomName(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// Env is one isolated, migrated Accord installation.
type Env struct {
	DB      *sql.DB
	Dialect accord.Dialect
	// URL opens the same database from another process (for PostgreSQL add
	// Schema to the configuration).
	URL    string
	Schema string
}

// PostgresSchema creates a fresh schema on the test database, migrates it up
// and drops it when the test ends.
func PostgresSchema(t testing.TB) Env {
	t.Helper()
	db := Postgres(t)
	schema := RandomName("t_")
	m, err := migrate.New(db, &migrate.Config{Dialect: accord.Postgres, Schema: schema})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Migrate(context.Background(), migrate.Up, nil); err != nil {
		t.Fatalf("migrate schema %s: %v", schema, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := db.ExecContext(ctx, fmt.Sprintf(`DROP SCHEMA IF EXISTS "%s" CASCADE`, schema)); err != nil {
			t.Logf("drop schema %s: %v", schema, err)
		}
	})
	return Env{DB: db, Dialect: accord.Postgres, URL: PostgresURL(), Schema: schema}
}

// SQLite creates a migrated SQLite database in a temporary file.
func SQLite(t testing.TB) Env {
	t.Helper()
	url := "sqlite://" + filepath.Join(t.TempDir(), "accord.db")
	db, d, err := accord.OpenDB(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	m, err := migrate.New(db, &migrate.Config{Dialect: d})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Migrate(context.Background(), migrate.Up, nil); err != nil {
		t.Fatalf("migrate sqlite: %v", err)
	}
	return Env{DB: db, Dialect: d, URL: url}
}

// Dialects runs f as a parallel subtest once per dialect, each with its own
// migrated installation.
func Dialects(t *testing.T, f func(t *testing.T, env Env)) {
	t.Helper()
	t.Run("postgres", func(t *testing.T) {
		t.Parallel()
		f(t, PostgresSchema(t))
	})
	t.Run("mysql", func(t *testing.T) {
		t.Parallel()
		f(t, MySQLSchema(t))
	})
	t.Run("sqlite", func(t *testing.T) {
		t.Parallel()
		f(t, SQLite(t))
	})
}
