package cniplugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
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
		os.Exit(runDriver(os.Stdin, os.Stdout))
	}
	code := m.Run()
	removePluginBinaries()
	os.Exit(code)
}

type driverRequest struct {
	Op             string          `json:"op"` // add, check, del, status, validate
	BinDir         string          `json:"binDir"`
	CacheDir       string          `json:"cacheDir"`
	Conflist       json.RawMessage `json:"conflist"`
	ContainerID    string          `json:"containerID"`
	NetNS          string          `json:"netns"`
	IfName         string          `json:"ifName"`
	CapabilityArgs map[string]any  `json:"capabilityArgs,omitempty"`
}

type driverReply struct {
	Result json.RawMessage `json:"result,omitempty"`
	// Error is the failure, with the CNI code of the plugin error inside
	// it when there is one (999 otherwise).
	Error *types.Error `json:"error,omitempty"`
}

func runDriver(in io.Reader, out io.Writer) int {
	var req driverRequest
	reply := driverReply{}
	err := json.NewDecoder(in).Decode(&req)
	if err == nil {
		reply.Result, err = drive(context.Background(), req)
	}
	if err != nil {
		reply.Error = types.NewError(types.ErrInternal, err.Error(), "")
		var cniErr *types.Error
		if errors.As(err, &cniErr) {
			reply.Error.Code = cniErr.Code
		}
	}
	if err := json.NewEncoder(out).Encode(reply); err != nil {
		fmt.Fprintln(os.Stderr, "driver:", err)
		return 1
	}
	return 0
}

func drive(ctx context.Context, req driverRequest) (json.RawMessage, error) {
	list, err := libcni.ConfListFromBytes(req.Conflist)
	if err != nil {
		return nil, err
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{req.BinDir}, req.CacheDir, nil)
	rt := &libcni.RuntimeConf{
		ContainerID:    req.ContainerID,
		NetNS:          req.NetNS,
		IfName:         req.IfName,
		CapabilityArgs: req.CapabilityArgs,
	}
	switch req.Op {
	case "add":
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			return nil, err
		}
		return json.Marshal(res)
	case "check":
		return nil, cni.CheckNetworkList(ctx, list, rt)
	case "del":
		return nil, cni.DelNetworkList(ctx, list, rt)
	case "status":
		return nil, cni.GetStatusNetworkList(ctx, list)
	case "validate":
		caps, err := cni.ValidateNetworkList(ctx, list)
		if err != nil {
			return nil, err
		}
		return json.Marshal(caps)
	}
	return nil, fmt.Errorf("unknown op %q", req.Op)
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
