package cniplugin

// Privileged end-to-end tests: the real flannel, bridge, host-local,
// loopback and portmap binaries, driven through libcni as a container
// runtime drives them, between two network namespaces of their own (a
// "host" and a "container"). See driverEnv for why libcni runs in a child
// process.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/internal/subnetenv"
	"github.com/weft-net/weft/internal/tools/podrt"
)

// cniHost is one node: a host namespace the plugins run in, a container
// namespace, and the plugin's files in a temporary directory.
type cniHost struct {
	t                                      *testing.T
	binDir, hostNS, ctrNS                  string
	subnetFile, dataDir, ipamDir, cacheDir string
}

func newCNIHost(t *testing.T) *cniHost {
	t.Helper()
	binDir := pluginBinDir(t)
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	id := hex.EncodeToString(b[:])
	dir := t.TempDir()
	h := &cniHost{
		t:          t,
		binDir:     binDir,
		hostNS:     "wt-cni-host-" + id,
		ctrNS:      "wt-cni-ctr-" + id,
		subnetFile: filepath.Join(dir, "run", "subnet.env"),
		dataDir:    filepath.Join(dir, "flannel"),
		ipamDir:    filepath.Join(dir, "networks"),
		cacheDir:   filepath.Join(dir, "cache"),
	}
	for _, name := range []string{h.hostNS, h.ctrNS} {
		ip(t, "netns", "add", name)
		t.Cleanup(func() { ip(t, "netns", "del", name) })
	}
	return h
}

func ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func (h *cniHost) writeEnv(e subnetenv.Env) {
	h.t.Helper()
	if err := subnetenv.Write(h.subnetFile, e); err != nil {
		h.t.Fatal(err)
	}
}

// conflist is kube-flannel's cni-conf.json with the paths pointed into
// the test's directory and the given delegate map.
func (h *cniHost) conflist(cniVersion, delegate string) []byte {
	return fmt.Appendf(nil, `{"name":"cbr0","cniVersion":%q,"plugins":[
		{"type":"flannel","subnetFile":%q,"dataDir":%q,"ipam":{"dataDir":%q},
		 "capabilities":{"mac":true},"delegate":%s},
		{"type":"portmap","capabilities":{"portMappings":true}}]}`,
		cniVersion, h.subnetFile, h.dataDir, h.ipamDir, delegate)
}

// run performs one libcni operation on the container's eth0 from inside
// the host namespace.
func (h *cniHost) run(op string, conflist []byte, capArgs map[string]any) (json.RawMessage, *types.Error) {
	h.t.Helper()
	return h.runIf(op, "eth0", conflist, capArgs)
}

func (h *cniHost) runIf(op, ifName string, conflist []byte, capArgs map[string]any) (json.RawMessage, *types.Error) {
	h.t.Helper()
	self, err := os.Executable()
	if err != nil {
		h.t.Fatal(err)
	}
	client := podrt.Client{Self: self, Env: []string{driverEnv + "=1"}}
	res, err := client.Do(context.Background(), h.hostNS, podrt.Request{
		Op: op, BinDir: h.binDir, CacheDir: h.cacheDir, Conflist: conflist,
		ContainerID: "ctr-" + h.ctrNS, NetNS: "/run/netns/" + h.ctrNS, IfName: ifName,
		CapabilityArgs: capArgs,
	})
	var cniErr *types.Error
	if errors.As(err, &cniErr) {
		return nil, cniErr
	}
	if err != nil {
		h.t.Fatalf("driver %s: %v", op, err)
	}
	return res, nil
}

func (h *cniHost) mustRun(op string, conflist []byte, capArgs map[string]any) json.RawMessage {
	h.t.Helper()
	res, cniErr := h.run(op, conflist, capArgs)
	if cniErr != nil {
		h.t.Fatalf("%s: %v", op, cniErr)
	}
	return res
}

func (h *cniHost) add(cniVersion string, conflist []byte, capArgs map[string]any) *current.Result {
	h.t.Helper()
	raw := h.mustRun("add", conflist, capArgs)
	res, err := version.NewResult(cniVersion, raw)
	if err != nil {
		h.t.Fatalf("ADD result: %v\n%s", err, raw)
	}
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		h.t.Fatal(err)
	}
	return cur
}

// handle returns a netlink handle bound to a namespace, so the test reads
// it without moving any thread into it.
func (h *cniHost) handle(name string) *netlink.Handle {
	h.t.Helper()
	ns, err := netns.GetFromName(name)
	if err != nil {
		h.t.Fatal(err)
	}
	defer ns.Close()
	hd, err := netlink.NewHandleAt(ns)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(hd.Close)
	return hd
}

// addrs lists the global addresses of a link in a namespace, empty if
// the link does not exist.
func (h *cniHost) addrs(nsName, link string) []netip.Prefix {
	h.t.Helper()
	hd := h.handle(nsName)
	l, err := hd.LinkByName(link)
	if err != nil {
		return nil
	}
	list, err := hd.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		h.t.Fatal(err)
	}
	var out []netip.Prefix
	for _, a := range list {
		if a.IP.IsLinkLocalUnicast() {
			continue
		}
		addr, _ := netip.AddrFromSlice(a.IP)
		ones, _ := a.Mask.Size()
		out = append(out, netip.PrefixFrom(addr.Unmap(), ones))
	}
	return out
}

// routes renders eth0's gatewayed routes in the container as "dst via gw".
func (h *cniHost) routes() []string {
	h.t.Helper()
	hd := h.handle(h.ctrNS)
	l, err := hd.LinkByName("eth0")
	if err != nil {
		h.t.Fatal(err)
	}
	list, err := hd.RouteList(l, netlink.FAMILY_ALL)
	if err != nil {
		h.t.Fatal(err)
	}
	var out []string
	for _, r := range list {
		if r.Gw == nil {
			continue
		}
		dst := "default"
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones > 0 {
				dst = r.Dst.String()
			}
		}
		out = append(out, dst+" via "+r.Gw.String())
	}
	return out
}

// allocated reports whether host-local holds addr for the network.
func (h *cniHost) allocated(addr netip.Addr) bool {
	_, err := os.Stat(filepath.Join(h.ipamDir, "cbr0", addr.String()))
	return err == nil
}

func (h *cniHost) savedConfig() bool {
	_, err := os.Stat(filepath.Join(h.dataDir, "ctr-"+h.ctrNS))
	return err == nil
}

func resultAddrs(t *testing.T, res *current.Result) []netip.Prefix {
	t.Helper()
	var out []netip.Prefix
	for _, ipc := range res.IPs {
		addr, ok := netip.AddrFromSlice(ipc.Address.IP)
		if !ok {
			t.Fatalf("bad result address %v", ipc.Address)
		}
		ones, _ := ipc.Address.Mask.Size()
		out = append(out, netip.PrefixFrom(addr.Unmap(), ones))
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestLibcniLifecycle(t *testing.T) {
	t.Parallel()
	h := newCNIHost(t)
	h.writeEnv(envV4)
	conf := h.conflist("1.0.0", `{"hairpinMode":true,"isDefaultGateway":true}`)

	if raw := h.mustRun("validate", conf, nil); !strings.Contains(string(raw), "mac") {
		t.Errorf("validate: capabilities %s, want mac and portMappings", raw)
	}

	// As containerd does, bring the container's loopback up first.
	loConf := []byte(`{"cniVersion":"1.0.0","name":"cni-loopback","plugins":[{"type":"loopback"}]}`)
	if _, cniErr := h.runIf("add", "lo", loConf, nil); cniErr != nil {
		t.Fatalf("loopback ADD: %v", cniErr)
	}
	if l, err := h.handle(h.ctrNS).LinkByName("lo"); err != nil || l.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("container lo = %v (%v), want it up", l, err)
	}

	const mac = "c2:11:22:33:44:55"
	res := h.add("1.0.0", conf, map[string]any{"mac": mac})
	got := resultAddrs(t, res)
	if len(got) != 1 || !netip.MustParsePrefix("10.5.52.0/24").Contains(got[0].Addr()) || got[0].Bits() != 24 {
		t.Fatalf("ADD addresses = %v, want one in 10.5.52.0/24", got)
	}
	pod := got[0].Addr()
	if a := h.addrs(h.ctrNS, "eth0"); len(a) != 1 || a[0] != got[0] {
		t.Errorf("container eth0 addresses = %v, want %v", a, got[0])
	}
	if a := h.addrs(h.hostNS, "cni0"); len(a) != 1 || a[0] != netip.MustParsePrefix("10.5.52.1/24") {
		t.Errorf("host cni0 addresses = %v, want the gateway 10.5.52.1/24", a)
	}
	// runtimeConfig travels from libcni through the flannel plugin to the
	// bridge, which applies the requested MAC.
	if l, err := h.handle(h.ctrNS).LinkByName("eth0"); err != nil || l.Attrs().HardwareAddr.String() != mac {
		t.Errorf("container eth0 MAC = %v (%v), want %s", l, err, mac)
	}
	rts := h.routes()
	for _, want := range []string{"default via 10.5.52.1", "10.5.0.0/16 via 10.5.52.1"} {
		if !contains(rts, want) {
			t.Errorf("container routes %v lack %q", rts, want)
		}
	}
	if !h.allocated(pod) || !h.savedConfig() {
		t.Fatalf("after ADD: allocated %v, saved config %v; want both", h.allocated(pod), h.savedConfig())
	}

	h.mustRun("check", conf, map[string]any{"mac": mac})

	h.mustRun("del", conf, nil)
	if h.allocated(pod) || h.savedConfig() {
		t.Errorf("after DEL: allocated %v, saved config %v; want neither", h.allocated(pod), h.savedConfig())
	}
	if a := h.addrs(h.ctrNS, "eth0"); a != nil {
		t.Errorf("container eth0 still has %v after DEL", a)
	}
	h.mustRun("del", conf, nil) // DEL is idempotent
}

// TestLibcniRoutes runs kube-flannel's own conflist (CNI 0.3.1, which has
// no CHECK) and the isDefaultGateway=false variant upstream documents.
func TestLibcniRoutes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, version, delegate string
		want, notWant           []string
	}{
		{"kube-flannel", "0.3.1", `{"hairpinMode":true,"isDefaultGateway":true}`,
			[]string{"default via 10.5.52.1", "10.5.0.0/16 via 10.5.52.1"}, nil},
		{"no-default-gateway", "1.0.0", `{"isDefaultGateway":false}`,
			[]string{"10.5.0.0/16 via 10.5.52.1"}, []string{"default via 10.5.52.1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newCNIHost(t)
			h.writeEnv(envV4)
			conf := h.conflist(tt.version, tt.delegate)
			res := h.add(tt.version, conf, nil)
			rts := h.routes()
			for _, w := range tt.want {
				if !contains(rts, w) {
					t.Errorf("routes %v lack %q", rts, w)
				}
			}
			for _, w := range tt.notWant {
				if contains(rts, w) {
					t.Errorf("routes %v include %q", rts, w)
				}
			}
			pod := resultAddrs(t, res)[0].Addr()
			h.mustRun("del", conf, nil)
			if h.allocated(pod) {
				t.Errorf("%v still allocated after DEL", pod)
			}
			h.mustRun("del", conf, nil)
		})
	}
}

func TestLibcniDelWithoutSubnetFile(t *testing.T) {
	t.Parallel()
	h := newCNIHost(t)
	h.writeEnv(envV4)
	conf := h.conflist("1.0.0", `{"hairpinMode":true,"isDefaultGateway":true}`)
	pod := resultAddrs(t, h.add("1.0.0", conf, nil))[0].Addr()

	// flanneld stopped and its subnet.env is gone: DEL still releases the
	// address, from the configuration saved at ADD.
	if err := os.Remove(h.subnetFile); err != nil {
		t.Fatal(err)
	}
	h.mustRun("del", conf, nil)
	if h.allocated(pod) || h.savedConfig() {
		t.Errorf("after DEL: allocated %v, saved config %v; want neither", h.allocated(pod), h.savedConfig())
	}
	h.mustRun("del", conf, nil)
}

func TestLibcniDualStack(t *testing.T) {
	t.Parallel()
	h := newCNIHost(t)
	h.writeEnv(envDual)
	conf := h.conflist("1.0.0", `{"hairpinMode":true,"isDefaultGateway":true}`)
	got := resultAddrs(t, h.add("1.0.0", conf, nil))
	if len(got) != 2 ||
		!netip.MustParsePrefix("10.5.52.0/24").Contains(got[0].Addr()) ||
		!netip.MustParsePrefix("fc00:5:0:34::/64").Contains(got[1].Addr()) {
		t.Fatalf("ADD addresses = %v, want one in 10.5.52.0/24 and one in fc00:5:0:34::/64", got)
	}
	if a := h.addrs(h.ctrNS, "eth0"); len(a) != 2 {
		t.Errorf("container eth0 addresses = %v, want both families", a)
	}
	rts := h.routes()
	for _, want := range []string{"10.5.0.0/16 via 10.5.52.1", "fc00:5::/48 via fc00:5:0:34::1", "default via 10.5.52.1", "default via fc00:5:0:34::1"} {
		if !contains(rts, want) {
			t.Errorf("container routes %v lack %q", rts, want)
		}
	}
	h.mustRun("check", conf, nil)
	h.mustRun("del", conf, nil)
	for _, p := range got {
		if h.allocated(p.Addr()) {
			t.Errorf("%v still allocated after DEL", p.Addr())
		}
	}
}

func TestLibcniAddWithoutFlanneld(t *testing.T) {
	t.Parallel()
	h := newCNIHost(t)
	conf := h.conflist("0.3.1", `{"hairpinMode":true,"isDefaultGateway":true}`)
	_, cniErr := h.run("add", conf, nil)
	if cniErr == nil {
		t.Fatal("ADD without subnet.env succeeded")
	}
	if cniErr.Code != types.ErrTryAgainLater ||
		!strings.Contains(cniErr.Msg, "flanneld is not ready") || !strings.Contains(cniErr.Msg, h.subnetFile) {
		t.Errorf("ADD error = code %d %q; want code 11 saying flanneld is not ready and naming %s", cniErr.Code, cniErr.Msg, h.subnetFile)
	}
	if _, err := h.handle(h.ctrNS).LinkByName("eth0"); err == nil {
		t.Error("container got an eth0 from a failed ADD")
	}
	h.mustRun("del", conf, nil) // the runtime's clean-up after a failed ADD
}

func TestLibcniStatus(t *testing.T) {
	t.Parallel()
	h := newCNIHost(t)
	conf := h.conflist("1.1.0", `{"isDefaultGateway":true}`)
	_, cniErr := h.run("status", conf, nil)
	if cniErr == nil || cniErr.Code != types.ErrPluginNotAvailable || !strings.Contains(cniErr.Msg, "flanneld is not ready") {
		t.Errorf("STATUS without subnet.env = %v, want code 50 saying flanneld is not ready", cniErr)
	}
	h.writeEnv(envV4)
	h.mustRun("status", conf, nil)
}
