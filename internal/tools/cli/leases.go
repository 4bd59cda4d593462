package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"text/tabwriter"
	"time"

	"github.com/weft-net/weft/internal/backend/backends"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/lease/etcdstore"
)

// leaseRow is one line of `weft leases`.
type leaseRow struct {
	Key         string `json:"key"`
	Subnet      string `json:"subnet,omitempty"`
	IPv6Subnet  string `json:"ipv6Subnet,omitempty"`
	PublicIP    string `json:"publicIP,omitempty"`
	PublicIPv6  string `json:"publicIPv6,omitempty"`
	Backend     string `json:"backend,omitempty"`
	Identity    string `json:"identity,omitempty"` // vxlan: VTEP MAC; wireguard: public key
	Reservation bool   `json:"reservation"`
	Error       string `json:"error,omitempty"`
}

func leasesCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("weft leases", flag.ContinueOnError)
	fs.SetOutput(stderr)
	etcd := config.AddEtcdFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	timeout := fs.Duration("timeout", 10*time.Second, "how long to try reaching etcd")
	opts, err := parseWithEtcd(fs, etcd, args)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	events, err := listLeases(ctx, opts)
	if err != nil {
		return err
	}
	rows := make([]leaseRow, 0, len(events))
	for _, ev := range events {
		rows = append(rows, rowOf(ev))
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SUBNET\tIPV6 SUBNET\tPUBLIC IP\tBACKEND\tMAC / KEY\tNOTE")
	for _, r := range rows {
		note := ""
		if r.Reservation {
			note = "reservation"
		}
		if r.Error != "" {
			note = "malformed: " + r.Error
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", dash(r.Subnet), dash(r.IPv6Subnet), dash(cmp.Or(r.PublicIP, r.PublicIPv6)), dash(r.Backend), dash(r.Identity), note)
	}
	return tw.Flush()
}

// parseWithEtcd parses args into fs, then resolves the etcd flags
// registered on it: those not given on the command line come from
// flanneld's FLANNELD_* environment, so a subcommand reaches etcd as the
// daemon run with that environment does.
func parseWithEtcd(fs *flag.FlagSet, etcd *config.EtcdFlags, args []string) (config.Options, error) {
	if err := fs.Parse(args); err != nil {
		return config.Options{}, err
	}
	return etcd.Resolve(os.Getenv)
}

// listLeases lists the subnets directory through the daemon's own store
// code: the same TLS and authentication, the same key layout, and its
// explanation of a connection etcd refuses.
func listLeases(ctx context.Context, opts config.Options) ([]lease.Event, error) {
	s, err := etcdstore.New(ctx, slog.New(slog.DiscardHandler), etcdstore.ConfigFrom(opts))
	if err != nil {
		return nil, err
	}
	defer s.Close()
	events, err := s.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list leases: %w", err)
	}
	return events, nil
}

func rowOf(ev lease.Event) leaseRow {
	l := ev.Lease
	r := leaseRow{Key: ev.Key, Backend: l.Attrs.BackendType, Reservation: l.Reservation,
		Subnet: str(l.Subnet), IPv6Subnet: str(l.IPv6Subnet),
		PublicIP: str(l.Attrs.PublicIP), PublicIPv6: str(l.Attrs.PublicIPv6)}
	if ev.Err != nil {
		r.Error = ev.Err.Error()
	}
	if r.Identity = backends.Identity(l.Attrs, false); r.Identity == "" {
		r.Identity = backends.Identity(l.Attrs, true)
	}
	return r
}

func str[T interface {
	IsValid() bool
	String() string
}](v T) string {
	if !v.IsValid() {
		return ""
	}
	return v.String()
}
