package replica_test

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/migrate"
)

// openExampleDB opens a new SQLite database in a temporary directory,
// applies Accord's migrations and creates the examples' replica table. The
// returned function closes the database and removes the directory.
func openExampleDB() (*sql.DB, func()) {
	dir, err := os.MkdirTemp("", "accord-replica-example-")
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
	if _, err := db.ExecContext(ctx, `CREATE TABLE customers (id TEXT PRIMARY KEY, name TEXT NOT NULL)`); err != nil {
		panic(err)
	}
	return db, cleanup
}

// customerName reads the replicated customer's name.
func customerName(db *sql.DB, id string) string {
	var name string
	if err := db.QueryRow(`SELECT name FROM customers WHERE id = ?`, id).Scan(&name); err != nil {
		panic(err)
	}
	return name
}
