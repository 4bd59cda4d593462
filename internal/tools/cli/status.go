package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/httpapi"
)

// statusReport is what `weft status --json` prints.
type statusReport struct {
	Daemon  *httpapi.Status `json:"daemon,omitempty"`
	Healthz string          `json:"healthz"`
	Readyz  string          `json:"readyz"`
	Drift   *drift          `json:"drift,omitempty"`
	Store   *storeSummary   `json:"store,omitempty"`
	// WireGuard is what our WireGuard devices report (wireguard backend).
	WireGuard []wgDevice `json:"wireguard,omitempty"`
	Errors    []string   `json:"errors,omitempty"`
}

type drift struct {
	Desired int      `json:"desired"`
	Kernel  int      `json:"kernel"`
	Missing []string `json:"missing,omitempty"` // desired, not in the kernel
	Extra   []string `json:"extra,omitempty"`   // in the kernel on our devices, not desired
}

type storeSummary struct {
	Leases int `json:"leases"`
}

func statusCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("weft status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", defaultSocket(os.Getenv),
		"the local flanneld's status socket (its --status-socket; by default "+config.StatusSocketName+" beside $FLANNELD_SUBNET_FILE, else /run/flannel/"+config.StatusSocketName+")")
	url := fs.String("url", "", "read a flanneld's healthz listener instead, e.g. http://10.0.0.5:8285 (that flanneld must run with --healthz-status); "+
		"the kernel is compared only when the address is a loopback one")
	etcd := config.AddEtcdFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	opts, err := parseWithEtcd(fs, etcd, args)
	if err != nil {
		return err
	}
	c, local, err := newDaemonClient(*socket, *url)
	if err != nil {
		return err
	}
	defer c.close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rep := statusReport{}
	var st httpapi.Status
	if err := c.getJSON(ctx, "/v1/status", &st); err != nil {
		rep.Errors = append(rep.Errors, "daemon: "+err.Error())
	} else {
		rep.Daemon = &st
		if local {
			if err := readKernel(st, &rep); err != nil {
				rep.Errors = append(rep.Errors, "kernel: "+err.Error())
			}
		}
	}
	rep.Healthz = c.probe(ctx, "/healthz")
	rep.Readyz = c.probe(ctx, "/readyz")
	// The store summary is the one thing that needs etcd: only when
	// told where it is (flag or FLANNELD_ETCD_ENDPOINTS).
	if etcd.Given("etcd-endpoints") {
		if events, err := listLeases(ctx, opts); err != nil {
			rep.Errors = append(rep.Errors, "store: "+err.Error())
		} else {
			rep.Store = &storeSummary{Leases: len(events)}
		}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	printStatus(stdout, rep)
	if len(rep.Errors) > 0 {
		return fmt.Errorf("%d problem(s)", len(rep.Errors))
	}
	return nil
}

// readKernel fills rep's drift and WireGuard devices from the kernel.
func readKernel(st httpapi.Status, rep *statusReport) error {
	// The daemon's udp devices are TUNs in the kernel whose tables live
	// in the daemon: its status reports them.
	dp, err := dataplane.NewNetlink(slog.New(slog.DiscardHandler), netns.None(), dataplane.UDPView(st.UDP))
	if err != nil {
		return err
	}
	defer dp.Close()
	if rep.Drift, err = checkDrift(dp, st); err != nil {
		return err
	}
	rep.WireGuard, err = readWireGuard(dp, st.Devices)
	return err
}

// checkDrift compares the daemon's desired state with what the kernel has
// on our devices (and our-protocol routes elsewhere).
func checkDrift(dp *dataplane.Netlink, st httpapi.Status) (*drift, error) {
	k, err := dp.Dump(st.Devices...)
	if err != nil {
		return nil, err
	}
	kernel := k.Lines()
	d := &drift{Desired: len(st.Desired), Kernel: len(kernel)}
	have := make(map[string]bool, len(kernel))
	for _, l := range kernel {
		have[l] = true
	}
	want := make(map[string]bool, len(st.Desired))
	for _, l := range st.Desired {
		want[l] = true
		if !have[l] {
			d.Missing = append(d.Missing, l)
		}
	}
	for _, l := range kernel {
		if !want[l] {
			d.Extra = append(d.Extra, l)
		}
	}
	return d, nil
}

func printStatus(w io.Writer, rep statusReport) {
	if st := rep.Daemon; st != nil {
		l := st.Lease
		fmt.Fprintf(w, "lease     %s", dash(l.Subnet))
		if l.IPv6Subnet != "" {
			fmt.Fprintf(w, " + %s", l.IPv6Subnet)
		}
		fmt.Fprintf(w, "  public %s", dash(l.PublicIP))
		if l.PublicIPv6 != "" {
			fmt.Fprintf(w, " / %s", l.PublicIPv6)
		}
		switch {
		case l.Reserved:
			fmt.Fprint(w, "  (reservation)")
		case !l.Expires.IsZero():
			fmt.Fprintf(w, "  expires %s (in %s)", l.Expires.Format(time.RFC3339), time.Until(l.Expires).Round(time.Minute))
		}
		if l.State != "" && l.State != "held" {
			fmt.Fprintf(w, "  %s", strings.ToUpper(l.State[:1])+l.State[1:])
			if !l.LapsedSince.IsZero() {
				fmt.Fprintf(w, " (lapsed %s ago)", time.Since(l.LapsedSince).Round(time.Second))
			}
		}
		fmt.Fprintln(w)
		if s := st.Store; s.Reachable {
			fmt.Fprintln(w, "store     reachable")
		} else if !s.UnreachableSince.IsZero() {
			fmt.Fprintf(w, "store     UNREACHABLE since %s (%s); the dataplane is kept as it was\n",
				s.UnreachableSince.Format(time.RFC3339), time.Since(s.UnreachableSince).Round(time.Second))
		}
		fmt.Fprintf(w, "backend   %s\n", st.Backend)
		if st.Rules != "" {
			fmt.Fprintf(w, "rules     %s\n", st.Rules)
		} else {
			fmt.Fprintln(w, "rules     not managed (--ip-masq and --iptables-forward-rules off)")
		}
		p := st.LastPass
		kind := "incremental"
		if p.Full {
			kind = "full"
		}
		fmt.Fprintf(w, "last pass %s ago, %s, %d writes, took %s", time.Since(p.At).Round(time.Millisecond), kind, p.Writes, p.Took)
		if p.Error != "" {
			fmt.Fprintf(w, ", error: %s", p.Error)
		}
		fmt.Fprintln(w)
		printHealth(w, st.Health)
	}
	fmt.Fprintf(w, "healthz   %s\nreadyz    %s\n", rep.Healthz, strings.ReplaceAll(rep.Readyz, "\n", "\n          "))
	if d := rep.Drift; d != nil {
		if len(d.Missing) == 0 && len(d.Extra) == 0 {
			fmt.Fprintf(w, "kernel    in sync (%d objects)\n", d.Desired)
		} else {
			fmt.Fprintf(w, "kernel    DRIFT: %d missing, %d extra (desired %d, kernel %d)\n", len(d.Missing), len(d.Extra), d.Desired, d.Kernel)
			for i, l := range d.Missing {
				if i == 5 {
					fmt.Fprintf(w, "          … %d more missing\n", len(d.Missing)-5)
					break
				}
				fmt.Fprintf(w, "          - %s\n", l)
			}
			for i, l := range d.Extra {
				if i == 5 {
					fmt.Fprintf(w, "          … %d more extra\n", len(d.Extra)-5)
					break
				}
				fmt.Fprintf(w, "          + %s\n", l)
			}
		}
	}
	printWireGuard(w, rep.WireGuard)
	if rep.Daemon != nil {
		printUDP(w, rep.Daemon.UDP)
	}
	if s := rep.Store; s != nil {
		fmt.Fprintf(w, "store     %d leases in etcd\n", s.Leases)
	}
	if st := rep.Daemon; st != nil {
		fmt.Fprintf(w, "\nPEERS (%d)\n", len(st.Peers))
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "SUBNET\tIPV6 SUBNET\tPUBLIC IP\tMAC / KEY\tLAST CHANGED")
		peers := append([]httpapi.PeerStatus(nil), st.Peers...)
		sort.Slice(peers, func(i, j int) bool { return peers[i].Subnet < peers[j].Subnet })
		for _, p := range peers {
			pub, mac := cmp.Or(p.PublicIP, p.PublicIPv6), cmp.Or(p.Identity, p.IdentityV6)
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s ago\n", dash(p.Subnet), dash(p.IPv6Subnet), dash(pub), dash(mac), time.Since(p.LastSeen).Round(time.Second))
		}
		tw.Flush()
		writeSkipped(w, st)
	}
	for _, e := range rep.Errors {
		fmt.Fprintf(w, "error: %s\n", e)
	}
}

// writeSkipped lists the skipped leases: the count per reason, then the
// keys the daemon keeps as examples (a few per reason), quoted when they
// hold anything but printable text (a key is whatever was written).
func writeSkipped(w io.Writer, st *httpapi.Status) {
	total := 0
	for _, n := range st.SkippedByReason {
		total += n
	}
	if total == 0 && len(st.Skipped) == 0 {
		return
	}
	fmt.Fprintf(w, "\nSKIPPED LEASES (%d)\n", total)
	for _, reason := range slices.Sorted(maps.Keys(st.SkippedByReason)) {
		shown := 0
		for _, s := range st.Skipped {
			if s.Reason == reason {
				shown++
			}
		}
		more := ""
		if n := st.SkippedByReason[reason]; n > shown {
			more = fmt.Sprintf(", %d shown", shown)
		}
		fmt.Fprintf(w, "  %s: %d%s\n", reason, st.SkippedByReason[reason], more)
	}
	for _, s := range st.Skipped {
		key := s.Key
		if !isPrintable(key) {
			key = strconv.Quote(key)
		}
		fmt.Fprintf(w, "  %s  %s\n", key, s.Reason)
	}
}

func isPrintable(s string) bool {
	for _, r := range s {
		if !unicode.IsPrint(r) || r == utf8.RuneError {
			return false
		}
	}
	return s != ""
}

// maxUnreachableShown bounds the unreachable peers printed (all are in
// --json).
const maxUnreachableShown = 20

// printHealth prints the peers' reachability: "cluster health: 4,998/5,000
// reachable", then the unreachable peers with since when and why.
func printHealth(w io.Writer, h *httpapi.HealthStatus) {
	if h == nil {
		return
	}
	if h.Off != "" {
		fmt.Fprintf(w, "cluster health: not probed: %s\n", h.Off)
		return
	}
	fmt.Fprintf(w, "cluster health: %s/%s reachable", thousands(h.Reachable), thousands(h.Peers))
	if pending := h.Peers - h.Reachable - h.Unreachable; pending > 0 {
		fmt.Fprintf(w, " (%s not probed yet)", thousands(pending))
	}
	fmt.Fprintf(w, ", probed every %s\n", h.Interval)
	for i, u := range h.UnreachablePeers {
		if i == maxUnreachableShown {
			fmt.Fprintf(w, "          … %d more unreachable (--json lists all)\n", len(h.UnreachablePeers)-i)
			break
		}
		name, pub := cmp.Or(u.Subnet, u.IPv6Subnet), cmp.Or(u.PublicIP, u.PublicIPv6)
		fmt.Fprintf(w, "          UNREACHABLE %s (public %s, probed %s) since %s (%s ago): %s\n",
			name, dash(pub), u.Probed, u.Since.Format(time.RFC3339), time.Since(u.Since).Round(time.Second), u.LastError)
	}
}

// thousands renders n with a comma every three digits.
func thousands(n int) string {
	s := strconv.Itoa(n)
	if n < 0 {
		return "-" + thousands(-n)
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
