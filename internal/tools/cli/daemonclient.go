package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	neturl "net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/weft-net/weft/internal/config"
)

// defaultSocket is where flanneld serves its status given the environment
// it would read: $FLANNELD_STATUS_SOCKET, else the socket beside
// $FLANNELD_SUBNET_FILE, else beside upstream's default subnet file
// (/run/flannel/weft.sock). Run with flanneld's environment, weft status
// finds the daemon that environment configures.
func defaultSocket(getenv func(string) string) string {
	if s := getenv(config.EnvName("status-socket")); s != "" && s != "none" {
		return s
	}
	subnetFile := getenv(config.EnvName("subnet-file"))
	if subnetFile == "" {
		subnetFile = "/run/flannel/subnet.env"
	}
	return config.DefaultStatusSocket(subnetFile)
}

// daemonClient reads a flanneld's HTTP endpoints: over its status socket,
// or over TCP at a base URL.
type daemonClient struct {
	base   string // "http://flanneld" for the socket
	socket string // "" for TCP
	hc     *http.Client
}

// newDaemonClient returns a client for url if it is set, else for socket;
// local says whether the daemon runs on this host (so that its desired
// state can be compared with this kernel).
func newDaemonClient(socket, url string) (c *daemonClient, local bool, err error) {
	if url != "" {
		u, err := neturl.Parse(url)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, false, fmt.Errorf("--url: %q is not an http(s) URL", url)
		}
		return &daemonClient{base: strings.TrimRight(url, "/"), hc: &http.Client{}}, isLoopback(u.Hostname()), nil
	}
	if socket == "" {
		return nil, false, errors.New("--socket: empty")
	}
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}
	return &daemonClient{base: "http://flanneld", socket: socket, hc: &http.Client{Transport: tr}}, true, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (c *daemonClient) close() { c.hc.CloseIdleConnections() }

// explain adds what to do about an error reaching the daemon.
func (c *daemonClient) explain(err error) error {
	switch {
	case c.socket == "":
		return err
	case errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%w (is flanneld running? it serves %s unless told otherwise by --status-socket or --subnet-file, which --socket or FLANNELD_STATUS_SOCKET / FLANNELD_SUBNET_FILE here must match)",
			err, filepath.Base(c.socket))
	case errors.Is(err, os.ErrPermission):
		return fmt.Errorf("%w (the socket is root's alone: run weft status as root)", err)
	}
	return err
}

func (c *daemonClient) get(ctx context.Context, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if c.socket != "" {
			// The URL names no real host; the socket is what was dialled.
			var ue *neturl.Error
			if errors.As(err, &ue) {
				err = ue.Err
			}
			return nil, c.explain(fmt.Errorf("%s: %w", c.socket, err))
		}
		return nil, err
	}
	return resp, nil
}

func (c *daemonClient) getJSON(ctx context.Context, path string, v any) error {
	resp, err := c.get(ctx, path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound && c.socket == "" {
		return fmt.Errorf("%s%s: %s (flanneld serves its status on the network only with --healthz-status; on its host, weft status reads the socket)", c.base, path, resp.Status)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// probe returns a probe's answer ("ok", or why not).
func (c *daemonClient) probe(ctx context.Context, path string) string {
	resp, err := c.get(ctx, path)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return strings.TrimSpace(string(b))
}
