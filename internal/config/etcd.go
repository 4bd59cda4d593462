package config

import (
	"errors"
	"flag"
	"fmt"
	"path/filepath"
	"strings"
)

// The etcd flags' defaults, upstream flanneld's.
const (
	DefaultEtcdEndpoints = "http://127.0.0.1:4001,http://127.0.0.1:2379"
	DefaultEtcdPrefix    = "/coreos.com/network"
)

// etcdFlagNames are the flags AddEtcdFlags registers.
var etcdFlagNames = []string{"etcd-endpoints", "etcd-prefix", "etcd-keyfile", "etcd-certfile", "etcd-cafile", "etcd-username", "etcd-password"}

// EtcdFlags are flanneld's etcd flags (--etcd-endpoints, --etcd-prefix,
// the TLS files, user and password) on a flag set of their own user's:
// flanneld's, and the weft CLI's, so that `weft leases` and `weft status`
// reach etcd exactly as the daemon does, from the same flags or the same
// FLANNELD_* environment.
type EtcdFlags struct {
	fs        *flag.FlagSet
	o         Options
	endpoints string
	given     map[string]bool // set on the command line or from the environment
}

// AddEtcdFlags registers the etcd flags on fs, with flanneld's defaults.
func AddEtcdFlags(fs *flag.FlagSet) *EtcdFlags {
	e := &EtcdFlags{fs: fs, endpoints: DefaultEtcdEndpoints}
	o := &e.o
	fs.StringVar(&e.endpoints, "etcd-endpoints", e.endpoints, "comma-separated list of etcd endpoints")
	fs.StringVar(&o.EtcdPrefix, "etcd-prefix", DefaultEtcdPrefix, "etcd prefix")
	fs.StringVar(&o.EtcdKeyFile, "etcd-keyfile", "", "SSL key file used to secure etcd communication")
	fs.StringVar(&o.EtcdCertFile, "etcd-certfile", "", "SSL certification file used to secure etcd communication")
	fs.StringVar(&o.EtcdCAFile, "etcd-cafile", "", "SSL Certificate Authority file used to secure etcd communication")
	fs.StringVar(&o.EtcdUsername, "etcd-username", "", "username for BasicAuth to etcd")
	fs.StringVar(&o.EtcdPassword, "etcd-password", "", "password for BasicAuth to etcd")
	return e
}

// Resolve is called after fs.Parse: flags not given on the command line
// are taken from FLANNELD_* variables looked up with getenv, as flanneld
// does. It returns Options with the Etcd* fields set.
func (e *EtcdFlags) Resolve(getenv func(string) string) (Options, error) {
	set := map[string]bool{}
	e.fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	fromEnv, err := applyEnv(e.fs, set, getenv, func(name string) bool {
		for _, n := range etcdFlagNames {
			if n == name {
				return true
			}
		}
		return false
	})
	if err != nil {
		return Options{}, err
	}
	e.given = set
	for name := range fromEnv {
		e.given[name] = true
	}
	return e.finish()
}

// Given reports whether the flag name (e.g. "etcd-endpoints") was set on
// the command line or from the environment, as opposed to defaulted.
func (e *EtcdFlags) Given(name string) bool { return e.given[name] }

func (e *EtcdFlags) finish() (Options, error) {
	o := e.o
	o.EtcdEndpoints = nil
	for _, ep := range strings.Split(e.endpoints, ",") {
		if ep = strings.TrimSpace(ep); ep != "" {
			o.EtcdEndpoints = append(o.EtcdEndpoints, ep)
		}
	}
	if len(o.EtcdEndpoints) == 0 {
		return o, errors.New("flags: --etcd-endpoints: empty")
	}
	return o, nil
}

// applyEnv sets each flag of fs that want accepts and that is not in set
// from its FLANNELD_* variable, when that is not empty. It returns the
// flags so set, with the variable that set each.
func applyEnv(fs *flag.FlagSet, set map[string]bool, getenv func(string) string, want func(string) bool) (map[string]string, error) {
	fromEnv := map[string]string{} // flag name → the variable that set it
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || envErr != nil || !want(f.Name) {
			return
		}
		name := EnvName(f.Name)
		v := getenv(name)
		if v == "" {
			return
		}
		// The whole value goes to Set, as upstream does: a repeatable
		// flag (--iface, --iface-regex) gets exactly one element from its
		// variable, so a regex such as eth{0,3} keeps its comma.
		if err := f.Value.Set(v); err != nil {
			envErr = fmt.Errorf("environment %s: %w", name, err)
		}
		fromEnv[f.Name] = name
	})
	return fromEnv, envErr
}

// EnvName is the environment variable that sets flag name:
// "etcd-endpoints" → "FLANNELD_ETCD_ENDPOINTS".
func EnvName(flag string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// StatusSocketName is the file name of the status socket, which flanneld
// puts beside its --subnet-file unless --status-socket says otherwise.
const StatusSocketName = "weft.sock"

// DefaultStatusSocket is where flanneld with --subnet-file subnetFile
// serves its status (/run/flannel/weft.sock for the default subnet file):
// beside the file every flannel host already has, in a directory made for
// flannel, so that each flanneld on a machine (one per network namespace,
// each with its own subnet file, as in weft's lab) has its own socket.
func DefaultStatusSocket(subnetFile string) string {
	return filepath.Join(filepath.Dir(subnetFile), StatusSocketName)
}
