package migrate_test

import (
	"context"
	"fmt"

	"github.com/accordgo/accord/migrate"
)

// Apply every pending migration, then check that the schema is complete, as
// a service would at startup.
func ExampleMigrator_Migrate() {
	ctx := context.Background()
	db, dialect, cleanup := openExampleDB() // empty SQLite in a temporary directory
	defer cleanup()

	m, err := migrate.New(db, &migrate.Config{Dialect: dialect})
	if err != nil {
		panic(err)
	}
	res, err := m.Migrate(ctx, migrate.Up, nil)
	if err != nil {
		panic(err)
	}
	for _, v := range res.Versions {
		fmt.Printf("applied %03d %s\n", v.Version, v.Name)
	}

	// Migrating again has nothing to do.
	res, err = m.Migrate(ctx, migrate.Up, nil)
	if err != nil {
		panic(err)
	}
	fmt.Println("second run applied", len(res.Versions))

	fmt.Println("validate:", m.Validate(ctx))

	// Output:
	// applied 001 migration_table
	// applied 002 outbox
	// applied 003 inbox
	// applied 004 replica
	// applied 005 feed
	// applied 006 outbox_dead
	// applied 007 relay_lease
	// applied 008 outbox_inserted_at
	// second run applied 0
	// validate: <nil>
}
