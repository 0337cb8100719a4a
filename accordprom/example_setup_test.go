package accordprom_test

import (
	"bufio"
	"database/sql"
	"fmt"
	"net/http"
	"strings"

	"github.com/accordgo/accord/internal/dbtest"
)

// openExampleDB opens a new, migrated SQLite database in a temporary
// directory. The returned function closes it and removes the directory.
func openExampleDB() (*sql.DB, func()) {
	return dbtest.ExampleSQLite()
}

// scrape gets url as Prometheus does and prints the samples of the
// metrics named (exactly, or as a histogram's _count), sorted as served.
func scrape(url string, names ...string) {
	resp, err := http.Get(url)
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, _, _ := strings.Cut(line, " ")
		name, _, _ = strings.Cut(name, "{")
		for _, n := range names {
			if name == n {
				fmt.Println(line)
			}
		}
	}
	if err := sc.Err(); err != nil {
		panic(err)
	}
}
