package inbox_test

import (
	"database/sql"

	"github.com/accordgo/accord/internal/dbtest"
)

// openExampleDB opens a migrated SQLite database in a temporary directory
// with the examples' business table and one account "alice" at 0.
func openExampleDB() (*sql.DB, func()) {
	return dbtest.ExampleSQLite("CREATE TABLE accounts (id TEXT PRIMARY KEY, balance INTEGER NOT NULL)", "INSERT INTO accounts VALUES ('alice', 0)")
}

// balance returns alice's balance.
func balance(db *sql.DB) int {
	var n int
	if err := db.QueryRow(`SELECT balance FROM accounts WHERE id = 'alice'`).Scan(&n); err != nil {
		panic(err)
	}
	return n
}
