package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Options are flanneld's command-line options. Names, defaults and units
// follow upstream flanneld so that existing manifests and unit files work.
type Options struct {
	EtcdEndpoints []string
	EtcdPrefix    string
	EtcdKeyFile   string
	EtcdCertFile  string
	EtcdCAFile    string
	EtcdUsername  string
	EtcdPassword  string

	KubeSubnetMgr             bool
	KubeAPIURL                string
	KubeconfigFile            string
	KubeAnnotationPrefix      string
	NetConfigPath             string
	SetNodeNetworkUnavailable bool

	Iface         []string
	IfaceRegex    []string
	IfaceCanReach netip.Addr
	PublicIP      netip.Addr
	PublicIPv6    netip.Addr

	SubnetFile             string
	SubnetLeaseRenewMargin time.Duration

	IPMasq                   bool
	IPMasqFullyRandomDisable bool
	IPTablesResync           time.Duration
	IPTablesForwardRules     bool
	IPBlackholeRoute         bool

	HealthzIP   string
	HealthzPort int
	// HealthzStatus also serves /v1/status (every peer's addresses,
	// subnets and backend data) on the healthz listener, for `weft status
	// --url` from elsewhere. Off by default: the listener is unauthenticated
	// and usually on every address.
	HealthzStatus bool
	// StatusSocket is the unix socket (mode 0600) on which `weft status`
	// reads the status, probes and metrics; empty when disabled
	// (--status-socket=none). Default: DefaultStatusSocket(SubnetFile).
	StatusSocket string

	// WireGuardKeyFile holds the wireguard backend's private key
	// (upstream's WIREGUARD_KEY_FILE, default /run/flannel/wgkey).
	WireGuardKeyFile string
	// WireGuardDevice chooses the WireGuard implementation: "auto" (the
	// kernel's, else a userspace device), "kernel" or "userspace".
	WireGuardDevice string
	// VXLANTxChecksum is the TX checksum offload (tx-checksum-ip-generic)
	// of our VXLAN devices: "auto" (off on kernels whose NAT corrupts
	// offloaded VXLAN checksums, dataplane.TxChecksumBroken; else left as
	// the kernel made it), "on" or "off".
	VXLANTxChecksum string

	// ResyncPeriod is how often the dataplane is compared with the kernel
	// and repaired (weft only; upstream has no periodic vxlan resync).
	ResyncPeriod time.Duration
	// ProbeInterval is how often every peer is probed through the overlay
	// (ICMP echo, spread over the interval; weft status "cluster
	// health"); 0 turns probing off.
	ProbeInterval time.Duration

	Version   bool
	Verbosity int

	// Ignored lists the settings given that upstream takes and weft does
	// not need (klog's -vmodule, EVENT_QUEUE_DEPTH, …), for the daemon to
	// log with the reason.
	Ignored []Ignored
}

// WireGuard implementations (--wireguard-device) and the default key file.
const (
	WireGuardAuto           = "auto"
	WireGuardKernel         = "kernel"
	WireGuardUserspace      = "userspace"
	DefaultWireGuardKeyFile = "/run/flannel/wgkey"
)

// Settings of --vxlan-tx-checksum.
const (
	TxChecksumAuto = "auto"
	TxChecksumOn   = "on"
	TxChecksumOff  = "off"
)

// EnvPrefix is prepended to a flag's upper-cased name (dashes become
// underscores) to form the environment variable that sets it.
const EnvPrefix = "FLANNELD_"

type stringList struct{ v *[]string }

func (s stringList) String() string {
	if s.v == nil {
		return ""
	}
	return strings.Join(*s.v, ",")
}

func (s stringList) Set(v string) error {
	*s.v = append(*s.v, v)
	return nil
}

type addrValue struct{ v *netip.Addr }

func (a addrValue) String() string {
	if a.v == nil || !a.v.IsValid() {
		return ""
	}
	return a.v.String()
}

func (a addrValue) Set(s string) error {
	if s == "" {
		*a.v = netip.Addr{}
		return nil
	}
	p, err := netip.ParseAddr(s)
	if err != nil {
		return fmt.Errorf("%q is not an IP address", s)
	}
	*a.v = p
	return nil
}

// unitDuration is an integer flag counted in unit (minutes, seconds) as
// upstream's flags are, stored as a time.Duration.
type unitDuration struct {
	v    *time.Duration
	unit time.Duration
}

func (d unitDuration) String() string {
	if d.v == nil {
		return ""
	}
	return strconv.FormatInt(int64(*d.v/d.unit), 10)
}

func (d unitDuration) Set(s string) error {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return fmt.Errorf("%q is not a non-negative whole number", s)
	}
	*d.v = time.Duration(n) * d.unit
	return nil
}

// The accepted range of --subnet-lease-renew-margin: at least a minute, and
// less than the 24 h lease lifetime.
const (
	minRenewMargin = time.Minute
	maxRenewMargin = 24*time.Hour - time.Minute
)

// flagOrigin names a flag in an error, with the environment variable that
// set it if one did.
func flagOrigin(name string, fromEnv map[string]string) string {
	if v, ok := fromEnv[name]; ok {
		return fmt.Sprintf("--%s (from %s)", name, v)
	}
	return "--" + name
}

// ParseOptions parses args (without the program name). Flags not given on
// the command line are taken from FLANNELD_* variables looked up with
// getenv. The error is flag.ErrHelp for -h/--help; usage goes to out.
func ParseOptions(args []string, getenv func(string) string, out io.Writer) (Options, error) {
	var o Options
	fs := flag.NewFlagSet("flanneld", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintln(out, "Usage: flanneld [OPTION]...")
		fs.PrintDefaults()
	}

	etcd := AddEtcdFlags(fs)

	fs.BoolVar(&o.KubeSubnetMgr, "kube-subnet-mgr", false, "contact the Kubernetes API for subnet assignment instead of etcd")
	fs.StringVar(&o.KubeAPIURL, "kube-api-url", "", "Kubernetes API server URL (only with --kube-subnet-mgr; default: in-cluster)")
	fs.StringVar(&o.KubeconfigFile, "kubeconfig-file", "", "kubeconfig file location (only with --kube-subnet-mgr)")
	fs.StringVar(&o.KubeAnnotationPrefix, "kube-annotation-prefix", "flannel.alpha.coreos.com", "Kubernetes annotation prefix")
	fs.StringVar(&o.NetConfigPath, "net-config-path", "/etc/kube-flannel/net-conf.json", "path to the network configuration (only with --kube-subnet-mgr)")
	fs.BoolVar(&o.SetNodeNetworkUnavailable, "set-node-network-unavailable", true, "set the node condition NetworkUnavailable=False when up (only with --kube-subnet-mgr)")

	fs.Var(stringList{&o.Iface}, "iface", "interface to use (IP or name) for inter-host communication; repeatable")
	fs.Var(stringList{&o.IfaceRegex}, "iface-regex", "regex of the interface to use (IP or name); repeatable")
	fs.Var(addrValue{&o.IfaceCanReach}, "iface-can-reach", "use the interface that routes to this IP")
	fs.Var(addrValue{&o.PublicIP}, "public-ip", "IP accessible by other nodes for inter-host communication")
	fs.Var(addrValue{&o.PublicIPv6}, "public-ipv6", "IPv6 accessible by other nodes for inter-host communication")

	fs.StringVar(&o.SubnetFile, "subnet-file", "/run/flannel/subnet.env", "filename where env variables (subnet, MTU, ...) will be written to")
	o.SubnetLeaseRenewMargin = 60 * time.Minute
	fs.Var(unitDuration{&o.SubnetLeaseRenewMargin, time.Minute}, "subnet-lease-renew-margin", "subnet lease renewal margin, in minutes")

	fs.BoolVar(&o.IPMasq, "ip-masq", false, "set up IP masquerade rules for traffic destined outside the overlay network")
	fs.BoolVar(&o.IPMasqFullyRandomDisable, "ip-masq-fully-random-disable", false, "disable the fully-random flag of the masquerade rules")
	o.IPTablesResync = 5 * time.Second
	fs.Var(unitDuration{&o.IPTablesResync, time.Second}, "iptables-resync", "resync period for iptables/nftables rules, in seconds")
	fs.BoolVar(&o.IPTablesForwardRules, "iptables-forward-rules", true, "add default accept rules to the FORWARD chain")
	fs.BoolVar(&o.IPBlackholeRoute, "ip-blackhole-route", false, "install a blackhole route for the own subnet")

	fs.StringVar(&o.HealthzIP, "healthz-ip", "0.0.0.0", "the IP address for the healthz server to listen on")
	fs.IntVar(&o.HealthzPort, "healthz-port", 0, "the port for the healthz server to listen on (0 to disable)")
	fs.BoolVar(&o.HealthzStatus, "healthz-status", false,
		"also serve /v1/status (every peer's addresses, subnets and MACs) on the healthz listener, without authentication (weft status --url)")
	fs.StringVar(&o.StatusSocket, "status-socket", "",
		"unix socket (mode 0600) serving the status to weft status; default "+StatusSocketName+" in the directory of --subnet-file; none to disable")

	fs.StringVar(&o.WireGuardDevice, "wireguard-device", WireGuardAuto,
		"WireGuard implementation for the wireguard backend: auto (the kernel's if it has the module, else userspace), kernel or userspace")

	fs.StringVar(&o.VXLANTxChecksum, "vxlan-tx-checksum", TxChecksumAuto,
		"TX checksum offload of the VXLAN devices: auto (off on kernels before 5.7, whose NAT corrupts offloaded VXLAN checksums; else as the kernel sets it), on or off")

	o.ResyncPeriod = 10 * time.Second
	fs.DurationVar(&o.ResyncPeriod, "resync-period", o.ResyncPeriod, "how often the dataplane is checked against the kernel and repaired")

	o.ProbeInterval = 30 * time.Second
	fs.DurationVar(&o.ProbeInterval, "probe-interval", o.ProbeInterval,
		"probe every peer through the overlay once per this interval (ICMP echo, spread evenly; weft status shows the unreachable ones); 0 turns it off")

	fs.BoolVar(&o.Version, "version", false, "print the version and exit")
	fs.IntVar(&o.Verbosity, "v", 0, "log verbosity: 0 info, 1 and above adds per-lease debug lines")
	ignoredKlog := klogFlags(fs)

	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return o, err
		}
		return o, fmt.Errorf("flags: %w", err)
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("flags: unexpected argument %q", fs.Arg(0))
	}

	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	fromEnv, err := applyEnv(fs, set, getenv, func(string) bool { return true })
	if err != nil {
		return o, err
	}
	o.Ignored = ignoredKlog(func(name string) bool { return set[name] || fromEnv[name] != "" })
	if o.KubeSubnetMgr {
		o.Ignored = append(o.Ignored, kubeEnv(getenv)...)
	}

	eo, err := etcd.finish()
	if err != nil && !o.KubeSubnetMgr {
		return o, err
	}
	o.EtcdEndpoints, o.EtcdPrefix = eo.EtcdEndpoints, eo.EtcdPrefix
	o.EtcdKeyFile, o.EtcdCertFile, o.EtcdCAFile = eo.EtcdKeyFile, eo.EtcdCertFile, eo.EtcdCAFile
	o.EtcdUsername, o.EtcdPassword = eo.EtcdUsername, eo.EtcdPassword
	switch o.StatusSocket {
	case "":
		o.StatusSocket = DefaultStatusSocket(o.SubnetFile)
	case "none":
		o.StatusSocket = ""
	}
	if o.PublicIP.IsValid() && !o.PublicIP.Is4() {
		return o, fmt.Errorf("flags: --public-ip: %s is not an IPv4 address", o.PublicIP)
	}
	if o.PublicIPv6.IsValid() && !o.PublicIPv6.Is6() {
		return o, fmt.Errorf("flags: --public-ipv6: %s is not an IPv6 address", o.PublicIPv6)
	}
	switch o.WireGuardDevice {
	case WireGuardAuto, WireGuardKernel, WireGuardUserspace:
	default:
		return o, fmt.Errorf("flags: %s: %q is not one of auto, kernel, userspace", flagOrigin("wireguard-device", fromEnv), o.WireGuardDevice)
	}
	switch o.VXLANTxChecksum {
	case TxChecksumAuto, TxChecksumOn, TxChecksumOff:
	default:
		return o, fmt.Errorf("flags: %s: %q is not one of auto, on, off", flagOrigin("vxlan-tx-checksum", fromEnv), o.VXLANTxChecksum)
	}
	// Upstream's variable, without the FLANNELD_ prefix.
	o.WireGuardKeyFile = getenv("WIREGUARD_KEY_FILE")
	if o.WireGuardKeyFile == "" {
		o.WireGuardKeyFile = DefaultWireGuardKeyFile
	}
	if o.HealthzPort < 0 || o.HealthzPort > 65535 {
		return o, fmt.Errorf("flags: --healthz-port: %d is not a port number", o.HealthzPort)
	}
	// The lease lives 24 h and is renewed this long before it expires:
	// 0 would renew only once it has lapsed, 24 h or more at once and
	// forever. Upstream refuses the same range.
	if m := o.SubnetLeaseRenewMargin; m < minRenewMargin || m > maxRenewMargin {
		return o, fmt.Errorf("flags: %s: %d minutes is outside %d..%d", flagOrigin("subnet-lease-renew-margin", fromEnv),
			int64(m/time.Minute), int64(minRenewMargin/time.Minute), int64(maxRenewMargin/time.Minute))
	}
	if o.ProbeInterval < 0 {
		return o, fmt.Errorf("flags: %s: must not be negative, got %s", flagOrigin("probe-interval", fromEnv), o.ProbeInterval)
	}
	if o.ResyncPeriod <= 0 {
		return o, fmt.Errorf("flags: --resync-period: must be positive, got %s", o.ResyncPeriod)
	}
	return o, nil
}
