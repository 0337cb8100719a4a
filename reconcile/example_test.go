package reconcile_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/reconcile"
)

// Compare a producer's table with a consumer's replica and list the drift.
func ExampleRun() {
	dir, _ := os.MkdirTemp("", "accord-reconcile")
	defer os.RemoveAll(dir)
	db, dialect, err := accord.OpenDB("sqlite://" + filepath.Join(dir, "example.db"))
	if err != nil {
		panic(err)
	}
	defer db.Close()
	for _, stmt := range []string{
		"CREATE TABLE users (id TEXT PRIMARY KEY, version INTEGER NOT NULL)",
		"CREATE TABLE users_replica (id TEXT PRIMARY KEY, version INTEGER NOT NULL)",
		"INSERT INTO users VALUES ('ada', 3), ('bob', 1), ('cy', 2)",
		"INSERT INTO users_replica VALUES ('ada', 2), ('bob', 1), ('zed', 1)",
	} {
		if _, err := db.Exec(stmt); err != nil {
			panic(err)
		}
	}
	source, _ := reconcile.NewSQLSide(db, reconcile.SQLSideConfig{Dialect: dialect, Table: "users", KeyColumn: "id", VersionColumn: "version"})
	replica, _ := reconcile.NewSQLSide(db, reconcile.SQLSideConfig{Dialect: dialect, Table: "users_replica", KeyColumn: "id", VersionColumn: "version"})

	rep, err := reconcile.Run(context.Background(), source, replica, nil)
	if err != nil {
		panic(err)
	}
	fmt.Println("in sync:", rep.InSync())
	for _, d := range rep.Stale {
		fmt.Printf("stale: %s (replica %d, source %d)\n", d.Key, d.ReplicaVersion, d.SourceVersion)
	}
	for _, d := range rep.Missing {
		fmt.Printf("missing: %s\n", d.Key)
	}
	for _, d := range rep.Extra {
		fmt.Printf("extra: %s\n", d.Key)
	}
	fmt.Println("to re-emit:", rep.DriftedKeys())
	// Output:
	// in sync: false
	// stale: ada (replica 2, source 3)
	// missing: cy
	// extra: zed
	// to re-emit: [ada cy zed]
}
