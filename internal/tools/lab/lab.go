// Package lab builds a cluster of "hosts" out of network namespaces on this
// machine: a hub namespace with a bridge (the underlay switch) and the
// cluster's etcd endpoint, and one namespace per host, cabled to the bridge
// with a veth pair, each running a real flanneld process. The end-to-end
// tests, `weft demo` and `weft bench` all stand on it.
//
// It shells out to ip(8) for the one-off plumbing (the dataplane package is
// the only one that speaks netlink) and never touches the root namespace:
// etcd listens on 127.0.0.1, and the hub reaches it through a small TCP
// relay whose listening socket is opened inside the hub namespace.
package lab

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
)

// Options describe a cluster.
type Options struct {
	// Name prefixes every namespace and link; keep it short (≤ 6 chars)
	// and unique per concurrent cluster, e.g. "wtvx".
	Name string
	// Hosts is the number of host namespaces.
	Hosts int
	// Underlay is the hub's IPv4 subnet (a /24); the hub is .1, hosts are
	// .11, .12, …
	Underlay netip.Prefix
	// UnderlayV6 optionally adds an IPv6 underlay (a /64), same numbering.
	UnderlayV6 netip.Prefix
	// Dir holds logs, subnet files and etcd data.
	Dir string
	// Flanneld is the daemon binary to run on each host.
	Flanneld string
	// EtcdCommand, if set, runs etcd out of process (so the cluster can
	// outlive this one): the command gets --dir, --hub-ns, --hub-addr and
	// --url-file flags and must call ServeEtcd. Otherwise etcd is embedded.
	EtcdCommand []string
	// EtcdMembers, when above 1, runs etcd as a cluster of that many real
	// members, each in a namespace of its own (etcdcluster.go), started
	// with EtcdMemberCommand: the command gets --name, --dir, --ip,
	// --initial-cluster and --ready-file flags and must call
	// ServeEtcdMember.
	EtcdMembers       int
	EtcdMemberCommand []string
	Log               *slog.Logger
}

// Host is one host namespace.
type Host struct {
	Index      int
	NS         string
	IP         netip.Addr
	IPv6       netip.Addr
	SubnetFile string
	LogFile    string
	// Env is extra environment for this host's flanneld, e.g. NODE_NAME
	// in Kubernetes mode.
	Env []string
	// Flanneld, if set, is the daemon binary this host runs instead of the
	// cluster's (Options.Flanneld): mixed clusters run upstream flanneld on
	// some hosts, and a takeover swaps it between two Starts.
	Flanneld string

	mu    sync.Mutex
	proc  *exec.Cmd
	done  chan struct{}
	err   error
	tmpfs bool // MountRunDir
}

// Cluster is a running lab cluster.
type Cluster struct {
	opts  Options
	Hub   string
	Hosts []*Host
	// Etcd is the embedded etcd (nil when it runs out of process or as a
	// cluster).
	Etcd *Etcd
	// EtcdCluster is the etcd cluster when Options.EtcdMembers > 1.
	EtcdCluster *EtcdCluster
	// EtcdClientURL reaches etcd from this (the root) namespace (with an
	// etcd cluster: its first member; EtcdCluster.LocalURLs has them all).
	EtcdClientURL string
	// EtcdEndpoint is what hosts pass as --etcd-endpoints.
	EtcdEndpoint string
	relay        net.Listener
	exposed      []net.Listener
	etcdProc     *exec.Cmd
	log          *slog.Logger
	detached     bool
}

func ip(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func nthAddr(p netip.Prefix, n int) netip.Addr {
	a := p.Masked().Addr()
	for i := 0; i < n; i++ {
		a = a.Next()
	}
	return a
}

// New builds the namespaces and starts etcd and the relay. On error
// everything built so far is removed.
func New(ctx context.Context, o Options) (_ *Cluster, err error) {
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	c := &Cluster{opts: o, Hub: o.Name + "-hub", log: o.Log}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, err
	}
	removeStale(o.Name)
	hubIP := nthAddr(o.Underlay, 1)
	bits := o.Underlay.Bits()
	steps := [][]string{
		{"netns", "add", c.Hub},
		{"-n", c.Hub, "link", "set", "lo", "up"},
		{"-n", c.Hub, "link", "add", "name", "br0", "type", "bridge"},
		{"-n", c.Hub, "addr", "add", fmt.Sprintf("%s/%d", hubIP, bits), "dev", "br0"},
		{"-n", c.Hub, "link", "set", "br0", "up"},
	}
	if o.UnderlayV6.IsValid() {
		steps = append(steps, []string{"-n", c.Hub, "addr", "add", fmt.Sprintf("%s/%d", nthAddr(o.UnderlayV6, 1), o.UnderlayV6.Bits()), "dev", "br0", "nodad"})
	}
	for _, s := range steps {
		if err := ip(ctx, s...); err != nil {
			return nil, err
		}
	}
	for i := 0; i < o.Hosts; i++ {
		h := &Host{
			Index:      i,
			NS:         fmt.Sprintf("%s-h%d", o.Name, i+1),
			IP:         nthAddr(o.Underlay, 11+i),
			SubnetFile: filepath.Join(o.Dir, fmt.Sprintf("h%d", i+1), "subnet.env"),
			LogFile:    filepath.Join(o.Dir, fmt.Sprintf("h%d.log", i+1)),
		}
		veth := fmt.Sprintf("%s-v%d", o.Name, i+1)
		steps := c.cableSteps(h.NS, veth, h.IP)
		if o.UnderlayV6.IsValid() {
			h.IPv6 = nthAddr(o.UnderlayV6, 11+i)
			steps = append(steps,
				[]string{"-n", h.NS, "addr", "add", fmt.Sprintf("%s/%d", h.IPv6, o.UnderlayV6.Bits()), "dev", "eth0", "nodad"},
				[]string{"-n", h.NS, "-6", "route", "add", "default", "via", nthAddr(o.UnderlayV6, 1).String()},
			)
		}
		// Registered before the steps run, so a half-built host is removed.
		c.Hosts = append(c.Hosts, h)
		for _, s := range steps {
			if err := ip(ctx, s...); err != nil {
				return nil, err
			}
		}
		// Forwarding lets pods behind this host reach others.
		if err := sysctl(h.NS, "net.ipv4.ip_forward", "1"); err != nil {
			return nil, err
		}
		if o.UnderlayV6.IsValid() {
			if err := sysctl(h.NS, "net.ipv6.conf.all.forwarding", "1"); err != nil {
				return nil, err
			}
		}
	}
	if o.EtcdMembers > 1 {
		if err := c.newEtcdCluster(ctx, o.EtcdMembers); err != nil {
			return nil, err
		}
		c.EtcdEndpoint = c.EtcdCluster.Endpoints()
		c.EtcdClientURL = c.EtcdCluster.Members[0].LocalURL
		return c, nil
	}
	const etcdPort = 2379
	hubAddr := fmt.Sprintf("%s:%d", hubIP, etcdPort)
	c.EtcdEndpoint = "http://" + hubAddr
	if len(o.EtcdCommand) > 0 {
		if err := c.startEtcdProcess(ctx, hubAddr); err != nil {
			return nil, err
		}
		return c, nil
	}
	c.Etcd, err = StartEtcd(filepath.Join(o.Dir, "etcd"))
	if err != nil {
		return nil, err
	}
	c.EtcdClientURL = c.Etcd.ClientURL
	c.relay, err = listenIn(c.Hub, hubAddr)
	if err != nil {
		return nil, err
	}
	go relay(c.relay, "", strings.TrimPrefix(c.Etcd.ClientURL, "http://"))
	return c, nil
}

// cableSteps are the ip(8) commands that make namespace ns and cable it
// to the hub's bridge like a host: a veth pair (veth on the hub's side,
// eth0 inside), addr on the underlay, the hub as the default gateway.
func (c *Cluster) cableSteps(ns, veth string, addr netip.Addr) [][]string {
	return [][]string{
		{"netns", "add", ns},
		{"-n", ns, "link", "set", "lo", "up"},
		{"-n", c.Hub, "link", "add", "name", veth, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"-n", c.Hub, "link", "set", veth, "master", "br0", "up"},
		{"-n", ns, "addr", "add", fmt.Sprintf("%s/%d", addr, c.opts.Underlay.Bits()), "dev", "eth0"},
		{"-n", ns, "link", "set", "eth0", "up"},
		{"-n", ns, "route", "add", "default", "via", nthAddr(c.opts.Underlay, 1).String()},
	}
}

// removeStale deletes namespaces left by an earlier run with the same name
// that was killed before it could clean up.
func removeStale(name string) int {
	ents, err := os.ReadDir("/run/netns")
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), name+"-") {
			if ip(context.Background(), "netns", "del", e.Name()) == nil {
				n++
			}
		}
	}
	return n
}

func sysctl(ns, key, val string) error {
	out, err := exec.Command("ip", "netns", "exec", ns, "sysctl", "-qw", key+"="+val).CombinedOutput()
	if err != nil {
		return fmt.Errorf("sysctl %s in %s: %w: %s", key, ns, err, out)
	}
	return nil
}

// Close stops every flanneld, etcd and the relay, and deletes the
// namespaces (which takes their links with them).
func (c *Cluster) Close() {
	if c.detached {
		return
	}
	if c.etcdProc != nil {
		_ = c.etcdProc.Process.Kill()
	}
	for _, h := range c.Hosts {
		_ = c.Stop(h, syscall.SIGKILL)
		h.unmountRunDir()
	}
	if c.relay != nil {
		c.relay.Close()
	}
	for _, l := range c.exposed {
		l.Close()
	}
	if c.Etcd != nil {
		c.Etcd.Close()
	}
	if c.EtcdCluster != nil {
		c.EtcdCluster.close()
	}
	for _, h := range c.Hosts {
		_ = ip(context.Background(), "netns", "del", h.NS)
	}
	_ = ip(context.Background(), "netns", "del", c.Hub)
	// Whatever else was made under our prefix (pods, say).
	removeStale(c.opts.Name)
}
