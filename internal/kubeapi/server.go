// Package kubeapi runs a real kube-apiserver: the binary built by
// tools/kube-apiserver/build.sh, backed by an embedded etcd, serving on a
// free 127.0.0.1 port with certificates and tokens made for the run. The
// Kubernetes-mode tests (through kubetest) and `weft bench --store kube`
// use it.
//
// Two identities are provisioned by a static token file: an admin (group
// system:masters) and flannel's service account
// system:serviceaccount:kube-flannel:flannel, so that once deploy/'s RBAC
// is applied, the store under test has exactly the permissions kube-flannel
// grants and no more (the server runs with --authorization-mode=RBAC).
package kubeapi

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/weft-net/weft/internal/tools/lab"
)

// FlannelUser is kube-flannel's service account, as the API server sees
// it; deploy/'s ClusterRoleBinding names it.
const FlannelUser = "system:serviceaccount:kube-flannel:flannel"

// Options configure a Server.
type Options struct {
	// Binary is the kube-apiserver to run.
	Binary string
	// Dir holds the PKI, etcd's data and the server's log; it must exist.
	Dir string
	// ExtraIPs are added to the serving certificate, for clients that reach
	// the server through a relay (a lab hub address).
	ExtraIPs []netip.Addr
	// Args are extra kube-apiserver flags.
	Args []string
}

// Server is a running kube-apiserver.
type Server struct {
	// URL is https://127.0.0.1:<port>.
	URL string
	// Addr is 127.0.0.1:<port>.
	Addr string
	// CA is the PEM of the CA that signed the serving certificate; CAFile
	// holds it.
	CA     []byte
	CAFile string
	// AdminToken and FlannelToken are bearer tokens of the two users.
	AdminToken, FlannelToken string
	// Admin is a client with cluster-admin rights.
	Admin kubernetes.Interface
	// Etcd is the backing etcd, for tests that act on storage directly
	// (compaction).
	Etcd *lab.Etcd
	// Ready is how long the server took from exec to /readyz (the last
	// start's, after a Restart).
	Ready time.Duration
	// LogFile is the server's stdout and stderr.
	LogFile string
	dir     string
	bin     string
	args    []string // extra flags
	stop    func()   // stops the running process; nil while stopped
}

// Start starts etcd and kube-apiserver and waits until the server is
// ready. Close stops both.
func Start(o Options) (_ *Server, err error) {
	s := &Server{dir: o.Dir, bin: o.Binary, args: o.Args, LogFile: filepath.Join(o.Dir, "apiserver.log")}
	if err := s.writePKI(o.ExtraIPs); err != nil {
		return nil, fmt.Errorf("kube-apiserver PKI: %w", err)
	}
	s.Etcd, err = lab.StartEtcd(filepath.Join(o.Dir, "etcd"))
	if err != nil {
		return nil, fmt.Errorf("etcd for kube-apiserver: %w", err)
	}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	// A free port can be taken between asking and binding; retry then.
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		s.Addr = l.Addr().String()
		l.Close()
		s.URL = "https://" + s.Addr
		if lastErr = s.start(); lastErr == nil {
			break
		}
	}
	if lastErr != nil {
		return nil, fmt.Errorf("start kube-apiserver: %w", lastErr)
	}
	s.Admin, err = kubernetes.NewForConfig(s.Config(s.AdminToken))
	if err != nil {
		return nil, fmt.Errorf("admin client: %w", err)
	}
	return s, nil
}

// Stop stops kube-apiserver (SIGTERM, as a rolling restart does); its etcd
// keeps running. Stopping a stopped server does nothing.
func (s *Server) Stop() {
	if s.stop != nil {
		s.stop()
		s.stop = nil
	}
}

// Close stops kube-apiserver and its etcd.
func (s *Server) Close() {
	s.Stop()
	if s.Etcd != nil {
		s.Etcd.Close()
	}
}

// Restart starts the server again on the same address, with the same etcd,
// certificates and tokens, after stopping it if it runs, and waits until
// it is ready; clients need not change anything.
func (s *Server) Restart() error {
	s.Stop()
	// The port was ours a moment ago; another process taking it in
	// between is unlikely, and would fail plainly.
	if err := s.start(); err != nil {
		return fmt.Errorf("restart kube-apiserver at %s: %w", s.Addr, err)
	}
	return nil
}

// start runs kube-apiserver on s.Addr until Stop.
func (s *Server) start() error {
	bin, extra := s.bin, s.args
	_, port, _ := net.SplitHostPort(s.Addr)
	p := func(name string) string { return filepath.Join(s.dir, name) }
	args := append([]string{
		"--etcd-servers=" + s.Etcd.ClientURL,
		"--bind-address=127.0.0.1",
		"--secure-port=" + port,
		// The root namespace may have no default route, from which the
		// server would derive its advertised address.
		"--advertise-address=192.0.2.1",
		"--tls-cert-file=" + p("apiserver.crt"), "--tls-private-key-file=" + p("apiserver.key"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p("sa.pub"),
		"--service-account-signing-key-file=" + p("sa.key"),
		"--token-auth-file=" + p("tokens.csv"),
		"--authorization-mode=RBAC",
		"--service-cluster-ip-range=10.96.0.0/12",
		// No controller-manager makes default service accounts.
		"--disable-admission-plugins=ServiceAccount",
	}, extra...)
	logf, err := os.OpenFile(s.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Killed with its parent even if that dies without cleanup.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("exec %s: %w", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); logf.Close() }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
			}
		})
	}
	if err := s.waitReady(exited); err != nil {
		stop()
		return fmt.Errorf("%w; log tail:\n%s", err, s.Tail(15))
	}
	s.Ready = time.Since(start)
	s.stop = stop
	return nil
}

func (s *Server) waitReady(exited <-chan error) error {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.CA)
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer hc.CloseIdleConnections()
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		req, _ := http.NewRequest(http.MethodGet, s.URL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+s.AdminToken)
		if resp, err := hc.Do(req); err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && string(body) == "ok" {
				return nil
			}
		}
		select {
		case err := <-exited:
			return fmt.Errorf("kube-apiserver exited: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return errors.New("kube-apiserver not ready after 90s")
}

// Tail returns the last n lines of the server's log.
func (s *Server) Tail(n int) string {
	b, err := os.ReadFile(s.LogFile)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Config returns a client config for the user of token.
func (s *Server) Config(token string) *rest.Config {
	return s.ConfigAt(s.URL, token)
}

// ConfigAt is Config for a server URL reached another way (a proxy or
// relay whose address is in the serving certificate).
func (s *Server) ConfigAt(url, token string) *rest.Config {
	return &rest.Config{
		Host:            url,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: s.CA},
		UserAgent:       "weft-test",
	}
}

// Kubeconfig writes a kubeconfig file for the user of token reaching the
// server at url, and returns its path.
func (s *Server) Kubeconfig(name, url, token string) (string, error) {
	path := filepath.Join(s.dir, name+".kubeconfig")
	doc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: %s
  user:
    token: %s
contexts:
- name: test
  context: {cluster: test, user: %s}
current-context: test
`, url, s.CAFile, name, token, name)
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		return "", fmt.Errorf("write kubeconfig: %w", err)
	}
	return path, nil
}
