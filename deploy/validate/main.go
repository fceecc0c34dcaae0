// Command validate checks Kubernetes manifests strictly against the API types of k8s.io/api: every document
// of every file must decode into its kind's Go type with unknown fields rejected and every value of the right
// type. It exits 1 naming the file, the document, the kind and the problem.
//
//	validate FILE.yaml...
package main

import (
	"bytes"
	"fmt"
	"os"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"
)

type typeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
}

// newObject is the Go type of each kind the chart renders; a kind missing here is an error, not a pass.
func newObject(t typeMeta) (any, error) {
	switch t.APIVersion + "/" + t.Kind {
	case "v1/ConfigMap":
		return &corev1.ConfigMap{}, nil
	case "v1/Secret":
		return &corev1.Secret{}, nil
	case "v1/Service":
		return &corev1.Service{}, nil
	case "v1/ServiceAccount":
		return &corev1.ServiceAccount{}, nil
	case "v1/PersistentVolumeClaim":
		return &corev1.PersistentVolumeClaim{}, nil
	case "apps/v1/DaemonSet":
		return &appsv1.DaemonSet{}, nil
	case "apps/v1/Deployment":
		return &appsv1.Deployment{}, nil
	case "policy/v1/PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, nil
	case "rbac.authorization.k8s.io/v1/ClusterRole":
		return &rbacv1.ClusterRole{}, nil
	case "rbac.authorization.k8s.io/v1/ClusterRoleBinding":
		return &rbacv1.ClusterRoleBinding{}, nil
	}
	return nil, fmt.Errorf("kind %s %s is not known to the validator", t.APIVersion, t.Kind)
}

// splitDocuments splits a YAML stream on its "---" separator lines.
func splitDocuments(data []byte) [][]byte {
	var docs [][]byte
	var cur bytes.Buffer
	for _, line := range bytes.SplitAfter(data, []byte("\n")) {
		if strings.TrimRight(string(line), " \r\n") == "---" {
			docs = append(docs, bytes.Clone(cur.Bytes()))
			cur.Reset()
			continue
		}
		cur.Write(line)
	}
	return append(docs, cur.Bytes())
}

func isEmpty(doc []byte) bool {
	for _, line := range strings.Split(string(doc), "\n") {
		l := strings.TrimSpace(line)
		if l != "" && !strings.HasPrefix(l, "#") {
			return false
		}
	}
	return true
}

func validate(path string) (int, []string) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, []string{err.Error()}
	}
	var problems []string
	n := 0
	for i, doc := range splitDocuments(data) {
		if isEmpty(doc) {
			continue
		}
		n++
		var t typeMeta
		if err := yaml.Unmarshal(doc, &t); err != nil {
			problems = append(problems, fmt.Sprintf("%s: document %d: %v", path, i+1, err))
			continue
		}
		obj, err := newObject(t)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: document %d: %v", path, i+1, err))
			continue
		}
		// UnmarshalStrict: unknown or duplicate fields fail, and so does a value of the wrong type.
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			problems = append(problems, fmt.Sprintf("%s: document %d (%s): %v", path, i+1, t.Kind, err))
		}
	}
	return n, problems
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: validate FILE.yaml...")
		os.Exit(2)
	}
	total := 0
	var all []string
	for _, path := range os.Args[1:] {
		n, problems := validate(path)
		total += n
		all = append(all, problems...)
	}
	for _, p := range all {
		fmt.Fprintln(os.Stderr, p)
	}
	if len(all) > 0 || total == 0 {
		if total == 0 {
			fmt.Fprintln(os.Stderr, "validate: no documents")
		}
		os.Exit(1)
	}
	fmt.Printf("validate: %d documents match the Kubernetes API types\n", total)
}
