package daemon

import (
	"context"
	"crypto/rand"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/internal/backend/backends"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/lease"
)

// scratchHost makes a namespace with an underlay eth0 (a bridge: it needs
// no peer) holding addr, runs the extra `ip` commands in it, and returns a
// Netlink over it; everything is removed at the end of the test.
func scratchHost(t *testing.T, prefix, addr string, extra ...[]string) (*dataplane.Netlink, *slog.Logger) {
	t.Helper()
	name := prefix + strings.ToLower(rand.Text()[:10])
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	cmds := append([][]string{
		{"link", "add", "eth0", "type", "bridge"},
		{"addr", "add", addr, "dev", "eth0"},
		{"link", "set", "eth0", "up"},
	}, extra...)
	for _, args := range cmds {
		if out, err := exec.Command("ip", append([]string{"-n", name}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	dp, err := dataplane.NewNetlink(log, ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dp.Close)
	return dp, log
}

// TestDaemonExitsWhenKernelRefusesDevice runs the daemon against the real
// kernel in a scratch namespace where a foreign VXLAN device already holds
// VNI 1 on port 8472 over the same underlay address, so the kernel refuses
// to create flannel.1. The daemon must stop with a one-line error naming
// the device, not run on with no overlay and no subnet.env (upstream exits
// when it cannot register its backend).
func TestDaemonExitsWhenKernelRefusesDevice(t *testing.T) {
	dp, log := scratchHost(t, "wt-dm-", "192.168.77.10/24",
		[]string{"link", "add", "other", "type", "vxlan", "id", "1", "local", "192.168.77.10", "dev", "eth0", "dstport", "8472", "nolearning"})

	store := lease.NewFake(nil)
	store.SetNetworkConfig([]byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`))
	opts := config.Options{
		SubnetFile:             filepath.Join(t.TempDir(), "subnet.env"),
		SubnetLeaseRenewMargin: time.Hour,
		ResyncPeriod:           time.Hour,
		Iface:                  []string{"eth0"},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := Run(ctx, Config{Options: opts, Log: log, Store: store, Dataplane: dp, System: dp})
	if ctx.Err() != nil {
		t.Fatal("daemon kept running with its device refused")
	}
	if err == nil || !strings.Contains(err.Error(), "create link flannel.1: file exists") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("Run = %v, want one line naming flannel.1's creation", err)
	}
	t.Logf("Run = %v", err)
	if _, err := os.Stat(opts.SubnetFile); !os.IsNotExist(err) {
		t.Errorf("subnet.env written (stat: %v)", err)
	}
}

// TestDaemonIPIPWithoutModule: the ipip backend on a kernel without the
// ipip module (this one) stops the daemon at start with one line naming
// the module and the backends to use instead, before subnet.env. On a
// kernel with the module it runs, and the test says the refusal could not
// be seen here.
func TestDaemonIPIPWithoutModule(t *testing.T) {
	dp, log := scratchHost(t, "wt-ip-", "192.168.78.10/24")
	store := lease.NewFake(nil)
	store.SetNetworkConfig([]byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"ipip"}}`))
	opts := config.Options{
		SubnetFile: filepath.Join(t.TempDir(), "subnet.env"), SubnetLeaseRenewMargin: time.Hour,
		ResyncPeriod: time.Hour, Iface: []string{"eth0"},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := Run(ctx, Config{Options: opts, Log: log, Store: store, Dataplane: dp, System: dp})
	if ctx.Err() != nil {
		if _, statErr := os.Stat(opts.SubnetFile); statErr != nil {
			t.Fatalf("the daemon neither stopped nor wrote subnet.env: %v", statErr)
		}
		t.Skip("this kernel has the ipip module: the daemon runs, so its refusal on a kernel without it cannot be seen here (it is tested against the fake kernel)")
	}
	want := "set up own ipip device: create link flannel.ipip: the kernel lacks this kind of device: ipip (load the ipip module: modprobe ipip): operation not supported; " +
		"use a backend this kernel supports (" + strings.Join(backends.Supported("ipip"), ", ") + ") or one with the module"
	if err == nil || err.Error() != want {
		t.Fatalf("Run = %v\nwant %s", err, want)
	}
	if _, err := os.Stat(opts.SubnetFile); !os.IsNotExist(err) {
		t.Errorf("subnet.env written (stat: %v)", err)
	}
}
