// Command modgate is a sidecar for Go module traffic. See README.md.
package main

import (
	"os"

	"github.com/modgate/modgate/cmd/modgate/internal/cli"
)

func main() { os.Exit(cli.Main()) }
