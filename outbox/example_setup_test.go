package outbox_test

import (
	"database/sql"

	"github.com/accordgo/accord/internal/dbtest"
)

// openExampleDB opens a migrated SQLite database in a temporary directory
// with the examples' business table.
func openExampleDB() (*sql.DB, func()) {
	return dbtest.ExampleSQLite("CREATE TABLE orders (id TEXT PRIMARY KEY, total_cents INTEGER NOT NULL)")
}

// pendingEvents counts the events waiting in the outbox for the relay.
func pendingEvents(db *sql.DB) int {
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM accord_outbox`).Scan(&n); err != nil {
		panic(err)
	}
	return n
}
