package outbox_test

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/migrate"
)

// openExampleDB opens a new SQLite database in a temporary directory,
// applies Accord's migrations and creates the examples' business table. The
// returned function closes the database and removes the directory.
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
	if _, err := db.ExecContext(ctx, `CREATE TABLE orders (id TEXT PRIMARY KEY, total_cents INTEGER NOT NULL)`); err != nil {
		panic(err)
	}
	return db, cleanup
}

// pendingEvents counts the events waiting in the outbox for the relay.
func pendingEvents(db *sql.DB) int {
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM accord_outbox`).Scan(&n); err != nil {
		panic(err)
	}
	return n
}
