// Command weft is the operator's and newcomer's tool: `weft demo` builds a
// whole cluster in network namespaces and tests it, `weft leases` lists the
// cluster's subnet leases.
package main

import (
	"os"

	"github.com/weft-net/weft/internal/tools/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr)) }
