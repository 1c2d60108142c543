package apispec_test

import (
	"encoding/base64"
	"os"
	"regexp"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/cocoon-run/cocoon/api/gen/filesystem"
	"github.com/cocoon-run/cocoon/api/gen/process"
)

// sdkBundle is the official SDK's code, installed by the test setup.
const sdkBundle = "../tests/e2e/node_modules/e2b/dist/index.mjs"

// TestEnvdProtosMatchSDK decodes the envd descriptors embedded in the
// official e2b SDK and checks that our .proto files declare the same
// messages, fields (names, numbers, types, oneofs), enums and RPCs: the
// wire contract the SDK relies on.
func TestEnvdProtosMatchSDK(t *testing.T) {
	src, err := os.ReadFile(sdkBundle)
	if err != nil {
		t.Fatalf("read the e2b SDK (run `npm ci` in tests/e2e): %v", err)
	}
	ours := map[string]protoreflect.FileDescriptor{
		"process/process.proto":       process.File_process_process_proto,
		"filesystem/filesystem.proto": filesystem.File_filesystem_filesystem_proto,
	}
	found := 0
	for _, m := range regexp.MustCompile(`fileDesc\("([A-Za-z0-9+/]+)"`).FindAllSubmatch(src, -1) {
		raw, err := base64.RawStdEncoding.DecodeString(string(m[1]))
		if err != nil {
			t.Fatalf("decode descriptor: %v", err)
		}
		var fd descriptorpb.FileDescriptorProto
		if err := proto.Unmarshal(raw, &fd); err != nil {
			t.Fatalf("unmarshal descriptor: %v", err)
		}
		our, ok := ours[fd.GetName()]
		if !ok {
			continue
		}
		found++
		compareFile(t, &fd, protodesc.ToFileDescriptorProto(our))
	}
	if found != len(ours) {
		t.Fatalf("found %d of the %d envd descriptors in the SDK", found, len(ours))
	}
}

func compareFile(t *testing.T, sdk, our *descriptorpb.FileDescriptorProto) {
	t.Helper()
	if sdk.GetPackage() != our.GetPackage() {
		t.Errorf("%s: package %q, SDK has %q", sdk.GetName(), our.GetPackage(), sdk.GetPackage())
	}
	ourMsgs := map[string]*descriptorpb.DescriptorProto{}
	var collect func(prefix string, ms []*descriptorpb.DescriptorProto)
	collect = func(prefix string, ms []*descriptorpb.DescriptorProto) {
		for _, m := range ms {
			ourMsgs[prefix+m.GetName()] = m
			collect(prefix+m.GetName()+".", m.GetNestedType())
		}
	}
	collect("", our.GetMessageType())
	var walk func(prefix string, ms []*descriptorpb.DescriptorProto)
	walk = func(prefix string, ms []*descriptorpb.DescriptorProto) {
		for _, sm := range ms {
			name := prefix + sm.GetName()
			om, ok := ourMsgs[name]
			if !ok {
				t.Errorf("message %s missing", name)
				continue
			}
			ourFields := map[int32]*descriptorpb.FieldDescriptorProto{}
			for _, f := range om.GetField() {
				ourFields[f.GetNumber()] = f
			}
			for _, sf := range sm.GetField() {
				of, ok := ourFields[sf.GetNumber()]
				if !ok {
					t.Errorf("%s: field %d (%s) missing", name, sf.GetNumber(), sf.GetName())
					continue
				}
				if of.GetName() != sf.GetName() || of.GetType() != sf.GetType() || of.GetLabel() != sf.GetLabel() ||
					of.GetTypeName() != sf.GetTypeName() || of.GetProto3Optional() != sf.GetProto3Optional() ||
					(sf.OneofIndex != nil) != (of.OneofIndex != nil) {
					t.Errorf("%s: field %d: got %v, SDK has %v", name, sf.GetNumber(), of, sf)
				}
			}
			if len(om.GetField()) != len(sm.GetField()) {
				t.Errorf("%s: %d fields, SDK has %d", name, len(om.GetField()), len(sm.GetField()))
			}
			walk(name+".", sm.GetNestedType())
		}
	}
	walk("", sdk.GetMessageType())

	ourEnums := map[string]map[string]int32{}
	for _, e := range our.GetEnumType() {
		vals := map[string]int32{}
		for _, v := range e.GetValue() {
			vals[v.GetName()] = v.GetNumber()
		}
		ourEnums[e.GetName()] = vals
	}
	for _, e := range sdk.GetEnumType() {
		for _, v := range e.GetValue() {
			if got, ok := ourEnums[e.GetName()][v.GetName()]; !ok || got != v.GetNumber() {
				t.Errorf("enum %s: value %s = %d missing or different", e.GetName(), v.GetName(), v.GetNumber())
			}
		}
	}

	ourMethods := map[string]*descriptorpb.MethodDescriptorProto{}
	for _, s := range our.GetService() {
		for _, m := range s.GetMethod() {
			ourMethods[s.GetName()+"/"+m.GetName()] = m
		}
	}
	for _, s := range sdk.GetService() {
		for _, sm := range s.GetMethod() {
			key := s.GetName() + "/" + sm.GetName()
			om, ok := ourMethods[key]
			if !ok {
				t.Errorf("rpc %s missing", key)
				continue
			}
			if om.GetInputType() != sm.GetInputType() || om.GetOutputType() != sm.GetOutputType() ||
				om.GetClientStreaming() != sm.GetClientStreaming() || om.GetServerStreaming() != sm.GetServerStreaming() {
				t.Errorf("rpc %s: got %v, SDK has %v", key, om, sm)
			}
		}
	}
}
