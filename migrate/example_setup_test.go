package migrate_test

import (
	"database/sql"
	"os"
	"path/filepath"

	"github.com/accordgo/accord"
)

// openExampleDB opens a new, empty SQLite database in a temporary directory.
// The returned function closes it and removes the directory.
func openExampleDB() (*sql.DB, accord.Dialect, func()) {
	dir, err := os.MkdirTemp("", "accord-example-")
	if err != nil {
		panic(err)
	}
	db, dialect, err := accord.OpenDB("sqlite://" + filepath.Join(dir, "app.db"))
	if err != nil {
		panic(err)
	}
	return db, dialect, func() {
		_ = db.Close()
		_ = os.RemoveAll(dir)
	}
}
