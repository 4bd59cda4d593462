package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// The daemon's API requests are counted from the kube-apiserver's audit
// log, which records every request of flannel's service account (and of
// no one else) once: a short request when it completes, a watch when its
// response starts (the stream then stays open).

// auditPolicy logs flannel's requests at the Metadata level, nothing else.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  users: ["%s"]
- level: None
`

// auditArgs writes the policy into dir and returns the kube-apiserver
// flags that audit flannel's requests to dir/audit.log.
func auditArgs(dir, user string) ([]string, string, error) {
	policy := filepath.Join(dir, "audit-policy.yaml")
	if err := os.WriteFile(policy, fmt.Appendf(nil, auditPolicy, user), 0o644); err != nil {
		return nil, "", err
	}
	log := filepath.Join(dir, "audit.log")
	return []string{
		"--audit-policy-file=" + policy,
		"--audit-log-path=" + log,
		"--audit-log-format=json",
		"--audit-log-mode=blocking",
		"--audit-log-maxsize=0",
	}, log, nil
}

// auditEvent is the part of an audit event the count needs.
type auditEvent struct {
	Stage string `json:"stage"`
	Verb  string `json:"verb"`
}

// Requests counts API requests by verb.
type Requests map[string]int

// Total is the number of requests of every verb.
func (r Requests) Total() int {
	n := 0
	for _, v := range r {
		n += v
	}
	return n
}

// sub is r minus an earlier count.
func (r Requests) sub(o Requests) Requests {
	out := Requests{}
	for k, v := range r {
		if d := v - o[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}

// countRequests reads the audit log: one request per completed short
// request, one per watch started.
func countRequests(path string) (Requests, error) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return Requests{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := Requests{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		var e auditEvent
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		if (e.Verb == "watch" && e.Stage == "ResponseStarted") || (e.Verb != "watch" && e.Stage == "ResponseComplete") {
			out[e.Verb]++
		}
	}
	return out, sc.Err()
}
