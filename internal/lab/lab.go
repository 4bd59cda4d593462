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
	"encoding/json"
	"errors"
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
	"time"

	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/internal/nsrun"
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
		steps := [][]string{
			{"netns", "add", h.NS},
			{"-n", h.NS, "link", "set", "lo", "up"},
			{"-n", c.Hub, "link", "add", "name", veth, "type", "veth", "peer", "name", "eth0", "netns", h.NS},
			{"-n", c.Hub, "link", "set", veth, "master", "br0", "up"},
			{"-n", h.NS, "addr", "add", fmt.Sprintf("%s/%d", h.IP, bits), "dev", "eth0"},
			{"-n", h.NS, "link", "set", "eth0", "up"},
			{"-n", h.NS, "route", "add", "default", "via", hubIP.String()},
		}
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
	go relay(c.relay, strings.TrimPrefix(c.Etcd.ClientURL, "http://"))
	return c, nil
}

func (c *Cluster) startEtcdProcess(ctx context.Context, hubAddr string) error {
	urlFile := filepath.Join(c.opts.Dir, "etcd.url")
	_ = os.Remove(urlFile)
	logf, err := os.Create(filepath.Join(c.opts.Dir, "etcd-process.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	args := append(append([]string(nil), c.opts.EtcdCommand[1:]...),
		"--dir", filepath.Join(c.opts.Dir, "etcd"), "--hub-ns", c.Hub, "--hub-addr", hubAddr, "--url-file", urlFile)
	cmd := exec.Command(c.opts.EtcdCommand[0], args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start etcd process: %w", err)
	}
	c.etcdProc = cmd
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	for {
		if b, err := os.ReadFile(urlFile); err == nil && len(b) > 0 {
			c.EtcdClientURL = strings.TrimSpace(string(b))
			return nil
		}
		select {
		case err := <-exited:
			out, _ := os.ReadFile(logf.Name())
			return fmt.Errorf("etcd process exited: %v: %s", err, out)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ServeEtcd runs an embedded etcd in dir, reachable from namespace hubNS
// at hubAddr through a relay, writes its client URL to urlFile, and runs
// until ctx ends. It is the body of the EtcdCommand process.
func ServeEtcd(ctx context.Context, dir, hubNS, hubAddr, urlFile string) error {
	e, err := StartEtcd(dir)
	if err != nil {
		return err
	}
	defer e.Close()
	l, err := listenIn(hubNS, hubAddr)
	if err != nil {
		return err
	}
	defer l.Close()
	go relay(l, strings.TrimPrefix(e.ClientURL, "http://"))
	if err := os.WriteFile(urlFile+".tmp", []byte(e.ClientURL+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.Rename(urlFile+".tmp", urlFile); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
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

// listenIn opens a TCP listener inside the named namespace. A socket keeps
// the namespace it was created in, so only the listen call runs on a
// thread switched into the namespace.
func listenIn(ns, addr string) (net.Listener, error) {
	target, err := netns.GetFromName(ns)
	if err != nil {
		return nil, fmt.Errorf("namespace %s: %w", ns, err)
	}
	defer target.Close()
	var l net.Listener
	err = nsrun.Do(target, func() error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	})
	return l, err
}

// relay copies each connection accepted on l to target until l closes.
func relay(l net.Listener, target string) {
	for {
		in, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer in.Close()
			out, err := net.DialTimeout("tcp", target, 5*time.Second)
			if err != nil {
				return
			}
			defer out.Close()
			done := make(chan struct{}, 2)
			go func() { io.Copy(out, in); out.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
			go func() { io.Copy(in, out); in.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
			<-done
			<-done
		}()
	}
}

// Expose makes target, a TCP address in the root namespace (a
// kube-apiserver on 127.0.0.1, say), reachable from the hosts at the hub's
// underlay address and port, the way etcd is. It returns that address;
// the relay closes with the cluster.
func (c *Cluster) Expose(port int, target string) (string, error) {
	addr := net.JoinHostPort(nthAddr(c.opts.Underlay, 1).String(), fmt.Sprint(port))
	l, err := listenIn(c.Hub, addr)
	if err != nil {
		return "", fmt.Errorf("expose %s at %s: %w", target, addr, err)
	}
	c.exposed = append(c.exposed, l)
	go relay(l, target)
	return addr, nil
}

// Start runs flanneld on h with the cluster's etcd and extra flags.
func (c *Cluster) Start(h *Host, extra ...string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.proc != nil {
		return fmt.Errorf("%s: flanneld already running", h.NS)
	}
	if err := os.MkdirAll(filepath.Dir(h.SubnetFile), 0o755); err != nil {
		return err
	}
	logf, err := os.OpenFile(h.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	bin := c.opts.Flanneld
	if h.Flanneld != "" {
		bin = h.Flanneld
	}
	if err := os.MkdirAll(h.wireguardDir(), 0o700); err != nil {
		return err
	}
	args := append(h.inNS(bin,
		"--etcd-endpoints="+c.EtcdEndpoint,
		"--iface=eth0",
		"--subnet-file="+h.SubnetFile,
	), extra...)
	cmd := exec.Command("ip", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// The WireGuard key file (upstream's default /run/flannel/wgkey) would
	// be one for every lab host: each gets its own unless told otherwise.
	cmd.Env = append(os.Environ(), "WIREGUARD_KEY_FILE="+filepath.Join(filepath.Dir(h.SubnetFile), "wgkey"))
	cmd.Env = append(cmd.Env, h.Env...)
	// Own process group, so a Ctrl-C to the test does not hit it first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	h.proc, h.done, h.err = cmd, make(chan struct{}), nil
	go func(done chan struct{}) {
		err := cmd.Wait()
		logf.Close()
		h.mu.Lock()
		h.err = err
		h.mu.Unlock()
		close(done)
	}(h.done)
	return nil
}

// Stop sends sig to h's flanneld and waits for it to exit, returning its
// exit error (nil for a clean exit).
func (c *Cluster) Stop(h *Host, sig syscall.Signal) error {
	h.mu.Lock()
	cmd, done := h.proc, h.done
	h.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.proc = nil
	return h.err
}

// Exited reports whether h's flanneld has exited on its own, and how.
func (h *Host) Exited() (bool, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.done == nil {
		return false, nil
	}
	select {
	case <-h.done:
		return true, h.err
	default:
		return false, nil
	}
}

// Pid returns the process ID of h's running flanneld, or 0. The daemon
// runs under `ip netns exec` and `sh -c … exec`, both of which exec, so
// the ID is the daemon's own (its /proc/PID/status is the daemon's).
func (h *Host) Pid() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.proc == nil || h.proc.Process == nil {
		return 0
	}
	return h.proc.Process.Pid
}

// Exec runs a command inside h's namespace and returns its combined output.
func (c *Cluster) Exec(ctx context.Context, h *Host, name string, args ...string) (string, error) {
	if err := os.MkdirAll(h.wireguardDir(), 0o700); err != nil {
		return "", err
	}
	out, err := exec.CommandContext(ctx, "ip", h.inNS(name, args...)...).CombinedOutput()
	return string(out), err
}

// Detach leaves the cluster running after this process exits: it records
// the processes in Dir/lab.json for Teardown, and makes Close a no-op.
// Only a cluster whose etcd runs out of process can be detached.
func (c *Cluster) Detach() error {
	if c.etcdProc == nil {
		return errors.New("detach: etcd runs inside this process")
	}
	st := state{Name: c.opts.Name, Pids: []int{c.etcdProc.Process.Pid}}
	for _, h := range c.Hosts {
		h.mu.Lock()
		if h.proc != nil {
			st.Pids = append(st.Pids, h.proc.Process.Pid)
		}
		h.mu.Unlock()
	}
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(c.opts.Dir, "lab.json"), b, 0o644); err != nil {
		return err
	}
	c.detached = true
	return nil
}

type state struct {
	Name string `json:"name"`
	Pids []int  `json:"pids"`
}

// Teardown removes a detached cluster whose state is in dir: it kills its
// processes and deletes its namespaces. It is harmless when nothing is
// left. It reports whether there was anything to remove.
func Teardown(dir, name string) (bool, error) {
	found := false
	b, err := os.ReadFile(filepath.Join(dir, "lab.json"))
	if err == nil {
		var st state
		if err := json.Unmarshal(b, &st); err != nil {
			return false, fmt.Errorf("%s: %w", filepath.Join(dir, "lab.json"), err)
		}
		for _, pid := range st.Pids {
			if p, err := os.FindProcess(pid); err == nil && p.Signal(syscall.SIGKILL) == nil {
				found = true
			}
		}
		if st.Name != "" {
			name = st.Name
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return false, err
	}
	if removeStale(name) > 0 {
		found = true
	}
	return found, os.RemoveAll(dir)
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
