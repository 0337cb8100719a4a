// Command accord is Accord's command line: run the relay worker, manage
// migrations, and benchmark the relay. Run `accord help` for the commands.
package main

import (
	"os"

	"github.com/accordgo/accord/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
