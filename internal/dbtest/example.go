package dbtest

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/migrate"
)

// ExampleSQLite opens a new SQLite database in a temporary directory for a
// runnable Example, applies Accord's migrations, then runs each of stmts
// (the example's own tables). It panics on error, as examples have no
// testing.T. The returned function closes the database and removes the
// directory.
func ExampleSQLite(stmts ...string) (*sql.DB, func()) {
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
	for _, stmt := range stmts {
		if _, err := db.ExecContext(ctx, stmt); err != nil {
			panic(err)
		}
	}
	return db, cleanup
}
