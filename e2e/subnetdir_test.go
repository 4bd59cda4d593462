package e2e

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/subnetenv"
	"github.com/weft-net/weft/internal/tools/lab"
)

// subnet.env and crashes or a broken directory (issue 15, scenario 3):
// flanneld killed while starting never leaves a torn file; a read-only or
// full directory makes it unready with the reason, retried with backoff,
// while it serves the dataplane, and it recovers by itself once fixed.

const subnetDirHealthz = "9190"

// TestSubnetDirReadOnly: host 1's /run/flannel is a read-only tmpfs when
// flanneld starts; then, once written, its subnet.env is removed and the
// file system made read-only again (a later rewrite fails).
func TestSubnetDirReadOnly(t *testing.T) {
	c, h1 := subnetDirCluster(t, "wtck3", "198.18.92.0/24")
	if err := h1.RemountRunDir(true); err != nil {
		t.Fatal(err)
	}
	c.brokenDir(h1, "create temporary file: read-only file system", func() {
		if err := h1.RemountRunDir(false); err != nil {
			t.Fatal(err)
		}
	})

	// A later rewrite: the file removed and the directory read-only; the
	// next resync (1 s) finds it gone and cannot put it back.
	if err := os.Remove(h1.SubnetFile); err != nil {
		t.Fatal(err)
	}
	if err := h1.RemountRunDir(true); err != nil {
		t.Fatal(err)
	}
	c.waitReadyz(h1, 503, "subnet file not written (retrying): write "+h1.SubnetFile+": create temporary file: read-only file system", 5*time.Second)
	if err := h1.RemountRunDir(false); err != nil {
		t.Fatal(err)
	}
	took := c.waitReadyz(h1, 200, "ok", 8*time.Second)
	if _, err := subnetenv.Read(h1.SubnetFile); err != nil {
		t.Fatal(err)
	}
	t.Logf("rewrite after removal: written and ready %v after the remount", took.Round(time.Millisecond))
}

// TestSubnetDirFull: host 1's /run/flannel is a full tmpfs when flanneld
// starts, until the filler is removed.
func TestSubnetDirFull(t *testing.T) {
	c, h1 := subnetDirCluster(t, "wtck4", "198.18.93.0/24")
	filler := filepath.Join(h1.RunDir(), "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	f.Close()
	c.brokenDir(h1, "write temporary file: no space left on device", func() {
		if err := os.Remove(filler); err != nil {
			t.Fatal(err)
		}
	})
}

// subnetDirCluster is two hosts, host 2 running; host 1 gets a 256 KiB
// tmpfs as its flannel directory.
func subnetDirCluster(t *testing.T, name, underlay string) (*cluster, *lab.Host) {
	c := newCluster(t, name, 2, underlay, `{"Network":"10.64.0.0/10","Backend":{"Type":"vxlan"}}`)
	h1, h2 := c.Hosts[0], c.Hosts[1]
	if err := c.Start(h2); err != nil {
		t.Fatal(err)
	}
	c.subnets[1] = c.waitSubnet(h2)
	if err := h1.MountRunDir(256 << 10); err != nil {
		t.Fatal(err)
	}
	return c, h1
}

// statusSocket is where host 1's status socket goes: beside its flannel
// directory, which may not take it.
func statusSocket(h *lab.Host) string { return filepath.Join(filepath.Dir(h.RunDir()), "h1.sock") }

// brokenDir starts flanneld on h with its subnet.env directory broken
// (reason is what the write fails with), checks what it says and does,
// runs fix, and checks it recovers.
func (c *cluster) brokenDir(h *lab.Host, reason string, fix func()) {
	t := c.t
	t.Helper()
	started := time.Now()
	if err := c.Start(h, "--healthz-ip=127.0.0.1", "--healthz-port="+subnetDirHealthz,
		"--status-socket="+statusSocket(h), "--resync-period=1s"); err != nil {
		t.Fatal(err)
	}
	want := "subnet file not written (retrying): write " + h.SubnetFile + ": " + reason
	c.waitReadyz(h, 503, want, 15*time.Second)

	// The dataplane is served: host 2's peer installed, pings answered.
	if err := c.pingUntil(h, netip.Addr{}, c.subnets[1].Addr(), 10*time.Second); err != nil {
		t.Error(err)
	}
	out, _ := c.Exec(context.Background(), h, weftBin, "status", "--socket="+statusSocket(h))
	if !strings.Contains(out, want) {
		t.Errorf("weft status does not say %q:\n%s", want, out)
	}
	// Retried with backoff, logged once.
	time.Sleep(3 * time.Second)
	_, metrics := c.curl(h, "http://127.0.0.1:"+subnetDirHealthz+"/metrics")
	failed := metricValue(metrics, "flannel_subnet_file_write_errors_total")
	since := time.Since(started)
	log, _ := os.ReadFile(h.LogFile)
	lines := strings.Count(string(log), "cannot write subnet file")
	t.Logf("%s: %v failed writes in the first %v, %d log line(s); /readyz: %q", reason, failed, since.Round(100*time.Millisecond), lines, want)
	// 100 ms doubling to 5 s: 6–7 attempts in ~4 s; a fixed 100 ms
	// retry would make 40.
	if failed < 3 || failed > 12 {
		t.Errorf("%v failed writes in %v, want 3–12 (retried, backing off)", failed, since)
	}
	if lines != 1 {
		t.Errorf("%d 'cannot write subnet file' log lines, want 1", lines)
	}
	if done, err := h.Exited(); done {
		t.Fatalf("flanneld exited: %v", err)
	}
	if _, err := os.Stat(h.SubnetFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("subnet.env: %v, want none", err)
	}

	fix()
	took := c.waitReadyz(h, 200, "ok", 8*time.Second)
	e, err := subnetenv.Read(h.SubnetFile)
	if err != nil || !e.Subnet.IsValid() {
		t.Fatalf("subnet.env after the fix: %+v, %v", e, err)
	}
	c.subnets[0] = subnetenv.LeasedSubnet(e.Subnet)
	t.Logf("fixed: subnet.env written and /readyz 200 %v later", took.Round(time.Millisecond))
	if err := c.pingUntil(c.Hosts[1], netip.Addr{}, c.subnets[0].Addr(), 10*time.Second); err != nil {
		t.Error(err)
	}
	ents, _ := os.ReadDir(h.RunDir())
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".subnet.env.tmp") {
			t.Errorf("temporary file left: %s", e.Name())
		}
	}
}

// waitReadyz waits for h's /readyz to answer code with a body containing
// body.
func (c *cluster) waitReadyz(h *lab.Host, code int, body string, within time.Duration) time.Duration {
	c.t.Helper()
	start := time.Now()
	for {
		got, b := c.curl(h, "http://127.0.0.1:"+subnetDirHealthz+"/readyz")
		if got == code && strings.Contains(b, body) {
			return time.Since(start)
		}
		if done, err := h.Exited(); done {
			c.t.Fatalf("%s: flanneld exited: %v", h.NS, err)
		}
		if time.Since(start) > within {
			c.t.Fatalf("%s: /readyz %d %q after %v, want %d %q", h.NS, got, b, within, code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSubnetEnvKilledAtStartup: flanneld SIGKILLed at random moments of
// its start, the network's MTU changing before each start: subnet.env is
// always one whole version, never torn or empty, and killed writers'
// temporary files do not pile up.
func TestSubnetEnvKilledAtStartup(t *testing.T) {
	const netconf = `{"Network":"10.64.0.0/10","Backend":{"Type":"vxlan","MTU":%d}}`
	c := newCluster(t, "wtck2", 1, "198.18.91.0/24", strings.Replace(netconf, "%d", "1500", 1))
	h := c.Hosts[0]
	began := time.Now()
	c.startAll()
	startup := time.Since(began)
	own := c.subnets[0]
	version := func(mtu int) string {
		return string(subnetenv.Env{Networks: []netip.Prefix{netip.MustParsePrefix("10.64.0.0/10")},
			Subnet: subnetenv.GatewayOf(own), MTU: mtu - 50}.Marshal())
	}
	versions := map[string]int{}
	for _, m := range []int{1500, 1400, 1300} {
		versions[version(m)] = m
	}
	if err := c.Stop(h, syscall.SIGKILL); err == nil {
		t.Fatal("flanneld survived SIGKILL")
	}
	t.Logf("a start takes %v to subnet.env", startup.Round(time.Millisecond))

	rounds, fresh, temps := 0, 0, 0
	deadline := time.Now().Add(45 * time.Second)
	for ; rounds < 40 && time.Now().Before(deadline); rounds++ {
		mtu := []int{1400, 1300, 1500}[rounds%3]
		if _, err := c.etcd.Put(context.Background(), "/coreos.com/network/config", strings.Replace(netconf, "%d", strconv.Itoa(mtu), 1)); err != nil {
			t.Fatal(err)
		}
		if err := c.Start(h); err != nil {
			t.Fatal(err)
		}
		// Anywhere from the exec to well after subnet.env.
		time.Sleep(time.Duration(rand.Int64N(int64(startup) * 3 / 2)))
		syscall.Kill(h.Pid(), syscall.SIGKILL)
		c.Stop(h, syscall.SIGKILL)
		b, err := os.ReadFile(h.SubnetFile)
		if err != nil {
			t.Fatalf("round %d: %v", rounds, err)
		}
		m, ok := versions[string(b)]
		if !ok {
			t.Fatalf("round %d: subnet.env is not a whole version:\n%q", rounds, b)
		}
		if m == mtu {
			fresh++
		}
		n := 0
		ents, _ := os.ReadDir(h.RunDir())
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".subnet.env.tmp") {
				n++
			}
		}
		if n > 1 {
			t.Fatalf("round %d: %d temporary files", rounds, n)
		}
		temps += n
	}
	t.Logf("%d starts killed: subnet.env whole every time; %d kills after the new version was written, %d before; %d left a temporary file",
		rounds, fresh, rounds-fresh, temps)
	if rounds < 10 {
		t.Errorf("only %d rounds", rounds)
	}
	if fresh == 0 || fresh == rounds {
		t.Errorf("every kill landed on the same side of the write (%d of %d after it)", fresh, rounds)
	}
	// A start left alone writes the last config's version.
	if err := c.Start(h); err != nil {
		t.Fatal(err)
	}
	last := []int{1400, 1300, 1500}[(rounds-1)%3]
	waitFor(t, "subnet.env with the last MTU", 20*time.Second, func() bool {
		b, _ := os.ReadFile(h.SubnetFile)
		return string(b) == version(last)
	})
}
