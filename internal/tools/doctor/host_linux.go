package doctor

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/coreos/go-iptables/iptables"
	"github.com/safchain/ethtool"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/nsrun"
)

// SysHost is the real Host: a network namespace (the calling process's
// when ns is not open) read through netlink, /proc/sys, ethtool and
// iptables; sockets and /proc/sys are opened on a thread in the namespace.
type SysHost struct {
	ns  netns.NsHandle
	h   *netlink.Handle
	eth *ethtool.Ethtool
}

var _ Host = (*SysHost)(nil)

// NewHost opens the namespace's handles.
func NewHost(ns netns.NsHandle) (*SysHost, error) {
	s := &SysHost{ns: ns}
	var err error
	if ns.IsOpen() {
		s.h, err = netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	} else {
		s.h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, fmt.Errorf("open netlink handle: %w", err)
	}
	if err := s.in(func() (err error) { s.eth, err = ethtool.NewEthtool(); return err }); err != nil {
		s.h.Close()
		return nil, fmt.Errorf("open ethtool socket: %w", err)
	}
	return s, nil
}

// Close releases the handles.
func (s *SysHost) Close() {
	s.eth.Close()
	s.h.Close()
}

func (s *SysHost) in(f func() error) error {
	if s.ns.IsOpen() {
		return nsrun.Do(s.ns, f)
	}
	return f()
}

// Sysctl implements Host.
func (s *SysHost) Sysctl(name string) (string, error) {
	var b []byte
	err := s.in(func() (err error) { b, err = os.ReadFile(filepath.Join("/proc/sys", name)); return err })
	return strings.TrimSpace(string(b)), err
}

// SetSysctl implements Host.
func (s *SysHost) SetSysctl(name, value string) error {
	return s.in(func() error { return os.WriteFile(filepath.Join("/proc/sys", name), []byte(value), 0o644) })
}

// Links implements Host.
func (s *SysHost) Links() ([]Link, error) {
	ls, err := s.h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	out := make([]Link, 0, len(ls))
	for _, l := range ls {
		a := l.Attrs()
		kind := l.Type()
		if kind == "device" {
			kind = ""
		}
		parent := a.ParentIndex
		switch t := l.(type) {
		case *netlink.Vxlan:
			parent = t.VtepDevIndex
		case *netlink.Iptun:
			parent = int(t.Link)
		case *netlink.Gretun:
			parent = int(t.Link)
		}
		out = append(out, Link{Name: a.Name, Kind: kind, Index: a.Index, MTU: a.MTU, Parent: parent})
	}
	return out, nil
}

// Routes implements Host.
func (s *SysHost) Routes() ([]Route, error) {
	rs, err := s.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	names := map[int]string{}
	if ls, err := s.h.LinkList(); err == nil {
		for _, l := range ls {
			names[l.Attrs().Index] = l.Attrs().Name
		}
	}
	out := make([]Route, 0, len(rs))
	for _, r := range rs {
		var dst netip.Prefix
		if r.Dst != nil {
			a, _ := netip.AddrFromSlice(r.Dst.IP)
			ones, _ := r.Dst.Mask.Size()
			dst = netip.PrefixFrom(a.Unmap(), ones)
		} else if r.Family == unix.AF_INET6 {
			dst = netip.MustParsePrefix("::/0")
		} else {
			dst = netip.MustParsePrefix("0.0.0.0/0")
		}
		gw, _ := netip.AddrFromSlice(r.Gw)
		out = append(out, Route{Dst: dst, Dev: names[r.LinkIndex], Gw: gw.Unmap(), Protocol: int(r.Protocol), Table: r.Table, Type: routeType(r.Type)})
	}
	return out, nil
}

func routeType(t int) string {
	switch t {
	case unix.RTN_BLACKHOLE:
		return "blackhole"
	case unix.RTN_UNREACHABLE:
		return "unreachable"
	case unix.RTN_PROHIBIT:
		return "prohibit"
	case unix.RTN_LOCAL:
		return "local"
	case unix.RTN_BROADCAST:
		return "broadcast"
	}
	return "unicast"
}

// TxChecksum implements Host.
func (s *SysHost) TxChecksum(dev string) (bool, error) {
	f, err := s.eth.Features(dev)
	if err != nil {
		return false, fmt.Errorf("read features of %s: %w", dev, err)
	}
	on, ok := f[dataplane.TxChecksumFeature]
	if !ok {
		return false, fmt.Errorf("%s has no %s feature", dev, dataplane.TxChecksumFeature)
	}
	return on, nil
}

// SetTxChecksum implements Host.
func (s *SysHost) SetTxChecksum(dev string, on bool) error {
	return s.eth.Change(dev, map[string]bool{dataplane.TxChecksumFeature: on})
}

// KernelRelease implements Host.
func (s *SysHost) KernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

// Processes implements Host: those whose network namespace is ours.
func (s *SysHost) Processes() ([]Process, error) {
	self := "/proc/self/ns/net"
	if s.ns.IsOpen() {
		self = fmt.Sprintf("/proc/self/fd/%d", int(s.ns))
	}
	want, err := os.Readlink(self)
	if err != nil {
		return nil, err
	}
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var out []Process
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		dir := filepath.Join("/proc", d.Name())
		if ns, err := os.Readlink(filepath.Join(dir, "ns/net")); err != nil || ns != want {
			continue // gone, a kernel thread, or another namespace
		}
		comm, _ := os.ReadFile(filepath.Join(dir, "comm"))
		cmdline, _ := os.ReadFile(filepath.Join(dir, "cmdline"))
		var args []string
		for _, a := range bytes.Split(bytes.TrimRight(cmdline, "\x00"), []byte{0}) {
			if len(a) > 0 {
				args = append(args, string(a))
			}
		}
		out = append(out, Process{PID: pid, Name: strings.TrimSpace(string(comm)), Cmdline: args})
	}
	return out, nil
}

// ReadFile implements Host.
func (s *SysHost) ReadFile(path string) ([]byte, error) { return os.ReadFile(path) }

// Forward implements Host, through iptables (-S FORWARD).
func (s *SysHost) Forward() (Chain, error) {
	var lines []string
	err := s.in(func() error {
		ipt, err := iptables.New()
		if err != nil {
			return err
		}
		lines, err = ipt.List("filter", "FORWARD")
		return err
	})
	if err != nil {
		return Chain{}, err
	}
	var c Chain
	for _, l := range lines {
		if p, ok := strings.CutPrefix(l, "-P FORWARD "); ok {
			c.Policy = strings.TrimSpace(p)
			continue
		}
		c.Rules = append(c.Rules, l)
	}
	return c, nil
}

// udpProbePort is the closed port UDP probes are sent to (traceroute's
// first).
const udpProbePort = 33434

// probeUDP sends a datagram to a closed port of dst; the peer's kernel
// answers port unreachable (ECONNREFUSED here) only if it arrived intact.
func (s *SysHost) probeUDP(dst netip.Addr, wait func(net.Conn) error) (answered bool, err error) {
	err = s.in(func() error {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, udpProbePort)))
		if err != nil {
			return err
		}
		defer c.Close()
		for range 3 {
			if _, err := c.Write([]byte("weft doctor checksum probe")); err != nil {
				if isRefused(err) {
					answered = true
					return nil
				}
				return err
			}
			if err := wait(c); isRefused(err) {
				answered = true
				return nil
			}
		}
		return nil
	})
	return answered, err
}
