package inbox_test

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/migrate"
)

// openExampleDB opens a new SQLite database in a temporary directory,
// applies Accord's migrations and creates the examples' business table,
// with one account "alice" at 0. The returned function closes the database
// and removes the directory.
func openExampleDB() (*sql.DB, func()) {
	dir, err := os.MkdirTemp("", "accord-example-")
	if err != nil {
		panic(err)
	}
	db, dialect, err := accord.OpenDB("sqlite://" + filepath.Join(dir, "app.db"))
	if err != nil {
		panic(err)
	}
	cleanup := func() {
		_ = db.Close()
		_ = os.RemoveAll(dir)
	}
	ctx := context.Background()
	m, err := migrate.New(db, &migrate.Config{Dialect: dialect})
	if err != nil {
		panic(err)
	}
	if _, err := m.Migrate(ctx, migrate.Up, nil); err != nil {
		panic(err)
	}
	if _, err := db.ExecContext(ctx, `CREATE TABLE accounts (id TEXT PRIMARY KEY, balance INTEGER NOT NULL);
		INSERT INTO accounts VALUES ('alice', 0)`); err != nil {
		panic(err)
	}
	return db, cleanup
}

// balance returns alice's balance.
func balance(db *sql.DB) int {
	var n int
	if err := db.QueryRow(`SELECT balance FROM accounts WHERE id = 'alice'`).Scan(&n); err != nil {
		panic(err)
	}
	return n
}
