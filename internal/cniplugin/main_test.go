package cniplugin

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/tools/podrt"
)

// driverEnv, when set, turns the test binary into the container-runtime
// stand-in of the privileged tests: it reads a driverRequest on stdin,
// performs it through libcni exactly as containerd would, and writes a
// driverReply on stdout. The tests start it with `ip netns exec <host
// namespace>`, because CNI plugins treat the namespace they run in as the
// host: this way the plugins' host side (the bridge, veth ends, sysctls)
// lands in a throw-away namespace, never in the machine's own, and no
// goroutine of the test process has to switch namespaces.
const driverEnv = "WEFT_CNI_TEST_DRIVER"

func TestMain(m *testing.M) {
	if os.Getenv(driverEnv) != "" {
		if err := podrt.Serve(context.Background(), os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "driver:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	code := m.Run()
	removePluginBinaries()
	os.Exit(code)
}

// The plugin binaries are built once per test binary, into a directory
// TestMain removes.
var pluginBinaries struct {
	once sync.Once
	dir  string
	err  error
}

func pluginBinDir(t *testing.T) string {
	t.Helper()
	pluginBinaries.once.Do(func() {
		pluginBinaries.dir, pluginBinaries.err = buildPlugins()
	})
	if pluginBinaries.err != nil {
		t.Fatal(pluginBinaries.err)
	}
	return pluginBinaries.dir
}

func buildPlugins() (string, error) {
	dir, err := os.MkdirTemp("", "weft-cni-bin-")
	if err != nil {
		return "", err
	}
	start := time.Now()
	cmd := exec.Command("go", "build", "-o", dir+"/",
		"github.com/weft-net/weft/cmd/flannel",
		"github.com/containernetworking/plugins/plugins/main/bridge",
		"github.com/containernetworking/plugins/plugins/ipam/host-local",
		"github.com/containernetworking/plugins/plugins/main/loopback",
		"github.com/containernetworking/plugins/plugins/meta/portmap")
	if out, err := cmd.CombinedOutput(); err != nil {
		return dir, fmt.Errorf("build CNI plugins: %w\n%s", err, out)
	}
	fmt.Fprintf(os.Stderr, "built CNI plugins in %v\n", time.Since(start).Round(time.Millisecond))
	return dir, nil
}

func removePluginBinaries() {
	if pluginBinaries.dir != "" {
		os.RemoveAll(pluginBinaries.dir)
	}
}
