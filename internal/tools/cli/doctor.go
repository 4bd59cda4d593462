package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/httpapi"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/tools/doctor"
)

// errFailed makes `weft doctor` exit 1 after printing its report.
var errFailed = errors.New("doctor: a check failed")

func doctorCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("weft doctor", flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", defaultSocket(os.Getenv), "the local flanneld's status socket")
	subnetFile := fs.String("subnet-file", "", "the subnet.env to check (default: the daemon's --subnet-file)")
	etcd := config.AddEtcdFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	fix := fs.Bool("fix", false, "apply the safe fixes (sysctls; our VXLAN devices' checksum offload)")
	only := fs.String("check", "", "run only these checks (comma-separated names)")
	sample := fs.Int("sample", 16, "peers probed per check")
	timeout := fs.Duration("timeout", 20*time.Second, "how long the whole run may take")
	opts, err := parseWithEtcd(fs, etcd, args)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	host, err := doctor.NewHost(netns.None())
	if err != nil {
		return err
	}
	defer host.Close()
	env := &doctor.Env{Host: host, SubnetFile: *subnetFile, Reach: doctor.SysReach{Host: host}, Sample: *sample}
	if c, _, err := newDaemonClient(*socket, ""); err != nil {
		env.StatusErr = err
	} else {
		var st httpapi.Status
		if err := c.getJSON(ctx, "/v1/status", &st); err != nil {
			env.StatusErr = err
		} else {
			env.Status = &st
		}
		c.close()
	}
	if etcd.Given("etcd-endpoints") {
		env.Store = etcdDoctorStore{opts: opts}
	}
	checks := doctor.Checks()
	if *only != "" {
		want := map[string]bool{}
		for _, n := range splitComma(*only) {
			want[n] = true
		}
		var sel []doctor.Check
		for _, c := range checks {
			if want[c.Name] {
				sel = append(sel, c)
				delete(want, c.Name)
			}
		}
		if len(want) > 0 {
			return fmt.Errorf("--check: unknown check(s) %v", want)
		}
		checks = sel
	}
	rep := doctor.Run(ctx, env, checks, *fix)
	if *asJSON {
		if err := rep.JSON(stdout); err != nil {
			return err
		}
	} else {
		rep.Print(stdout)
	}
	if !rep.OK {
		return errFailed
	}
	return nil
}

// etcdDoctorStore is doctor.Store over flanneld's etcd flags.
type etcdDoctorStore struct{ opts config.Options }

func (s etcdDoctorStore) Leases(ctx context.Context) ([]lease.Event, error) {
	return listLeases(ctx, s.opts)
}

// Clock reads etcd's wall clock from the Date header of its /version
// endpoint (served on the client URL beside gRPC), through the same TLS
// settings as the store.
func (s etcdDoctorStore) Clock(ctx context.Context) (time.Time, time.Duration, error) {
	if len(s.opts.EtcdEndpoints) == 0 {
		return time.Time{}, 0, errors.New("no etcd endpoint")
	}
	tr := &http.Transport{}
	if s.opts.EtcdCAFile != "" || s.opts.EtcdCertFile != "" {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if s.opts.EtcdCAFile != "" {
			pem, err := os.ReadFile(s.opts.EtcdCAFile)
			if err != nil {
				return time.Time{}, 0, err
			}
			cfg.RootCAs = x509.NewCertPool()
			cfg.RootCAs.AppendCertsFromPEM(pem)
		}
		if s.opts.EtcdCertFile != "" {
			cert, err := tls.LoadX509KeyPair(s.opts.EtcdCertFile, s.opts.EtcdKeyFile)
			if err != nil {
				return time.Time{}, 0, err
			}
			cfg.Certificates = []tls.Certificate{cert}
		}
		tr.TLSClientConfig = cfg
	}
	hc := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	url := strings.TrimRight(s.opts.EtcdEndpoints[0], "/") + "/version"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return time.Time{}, 0, err
	}
	start := time.Now()
	resp, err := hc.Do(req)
	if err != nil {
		return time.Time{}, 0, err
	}
	rtt := time.Since(start)
	resp.Body.Close()
	d, err := http.ParseTime(resp.Header.Get("Date"))
	if err != nil {
		return time.Time{}, 0, fmt.Errorf("%s: no usable Date header: %w", url, err)
	}
	// The header has whole seconds: the server's clock was somewhere in
	// [d, d+1s); take the middle.
	return d.Add(500 * time.Millisecond), rtt, nil
}
