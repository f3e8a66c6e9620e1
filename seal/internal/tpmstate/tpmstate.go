// Package tpmstate is the record the tpm2 seal keeps beside the vault (the
// Data of its seal.State): the storage root key's Name, the wrapped ECDH key
// and its PCR policy. The record is public and useless off the TPM that made
// it, but it is read from disk, so Parse treats it as untrusted: it is a pure
// function from bytes to a validated State or a *ParseError.
package tpmstate

import (
	"bytes"
	"crypto/ecdh"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/google/go-tpm/tpm2"
)

// Version is the only format this package reads and writes.
const Version = 1

// MaxSize caps the record; a real one is under 1 KiB.
const MaxSize = 16 << 10

// MaxPCR is the highest PCR index a policy may name (PC Client TPMs have 24).
const MaxPCR = 23

// maxPrivate caps TPM2B_PRIVATE (an ECC P-256 key wrapped by a P-256 SRK is
// about 126 bytes; the TPM's own limit is far below this).
const maxPrivate = 1024

// State is a validated tpm2 seal record.
type State struct {
	// Device is the TPM the seal was made on (RV_AGENT_TPM_DEVICE at the
	// time), shown by vault status.
	Device string
	// SRKName is the Name of the ECC P-256 SRK (tpm2.ECCSRKTemplate) of the
	// TPM that made the key: nameAlg SHA-256, 34 bytes.
	SRKName []byte
	// Public and Private are the key as TPM2_Create returned it; their
	// tpm2.Marshal forms are what tpm2_load reads.
	Public  tpm2.TPM2BPublic
	Private tpm2.TPM2BPrivate
	// PCRs are the SHA-256 PCRs the key's policy binds to, ascending; empty
	// for none.
	PCRs []int
	// PCRDigest is SHA-256 over those PCRs' values when the seal was made;
	// nil when PCRs is empty.
	PCRDigest []byte

	// Derived from Public by Parse (and by New).
	key     *ecdh.PublicKey
	keyName []byte
}

// ParseError is the one error Parse returns. Its text never repeats the input.
type ParseError struct{ msg string }

func (e *ParseError) Error() string { return "malformed seal record: " + e.msg }

func perr(format string, args ...any) error {
	return &ParseError{msg: fmt.Sprintf(format, args...)}
}

type record struct {
	Version   int    `json:"version"`
	Device    string `json:"device,omitempty"`
	SRKName   string `json:"srk_name"`
	Public    []byte `json:"public"`
	Private   []byte `json:"private"`
	PCRs      []int  `json:"pcrs,omitempty"`
	PCRDigest string `json:"pcr_digest,omitempty"`
}

// New builds a State from what TPM2_Create returned and validates it like
// Parse does.
func New(device string, srkName []byte, pub tpm2.TPM2BPublic, priv tpm2.TPM2BPrivate, pcrs []int, pcrDigest []byte) (*State, error) {
	s := &State{
		Device:    device,
		SRKName:   slices.Clone(srkName),
		Public:    tpm2.BytesAs2B[tpm2.TPMTPublic](slices.Clone(pub.Bytes())),
		Private:   tpm2.TPM2BPrivate{Buffer: slices.Clone(priv.Buffer)},
		PCRs:      slices.Clone(pcrs),
		PCRDigest: slices.Clone(pcrDigest),
	}
	if err := s.validate(); err != nil {
		return nil, err
	}
	return s, nil
}

// Marshal encodes s as the JSON record Parse reads.
func (s *State) Marshal() ([]byte, error) {
	r := record{
		Version: Version,
		Device:  s.Device,
		SRKName: hex.EncodeToString(s.SRKName),
		Public:  tpm2.Marshal(s.Public),
		Private: tpm2.Marshal(s.Private),
		PCRs:    s.PCRs,
	}
	if len(s.PCRDigest) > 0 {
		r.PCRDigest = hex.EncodeToString(s.PCRDigest)
	}
	return json.Marshal(r)
}

// Parse decodes and validates a record. Every failure is a *ParseError.
func Parse(data []byte) (st *State, err error) {
	// go-tpm's reflection (un)marshalling panics on some malformed unions;
	// nothing here may take the agent down.
	defer func() {
		if r := recover(); r != nil {
			st, err = nil, perr("malformed TPM structure")
		}
	}()
	if len(data) > MaxSize {
		return nil, perr("larger than %d bytes", MaxSize)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var r record
	if err := dec.Decode(&r); err != nil {
		return nil, perr("not a valid JSON record")
	}
	if dec.More() {
		return nil, perr("trailing data after the JSON record")
	}
	if r.Version != Version {
		return nil, perr("unsupported version %d (this agent reads version %d)", r.Version, Version)
	}
	srkName, err := hex.DecodeString(r.SRKName)
	if err != nil {
		return nil, perr("srk_name is not hex")
	}
	pub, err := unmarshalExact[tpm2.TPM2BPublic](r.Public)
	if err != nil {
		return nil, perr("public is not a TPM2B_PUBLIC")
	}
	priv, err := unmarshalExact[tpm2.TPM2BPrivate](r.Private)
	if err != nil {
		return nil, perr("private is not a TPM2B_PRIVATE")
	}
	var digest []byte
	if r.PCRDigest != "" {
		if digest, err = hex.DecodeString(r.PCRDigest); err != nil {
			return nil, perr("pcr_digest is not hex")
		}
	}
	s := &State{
		Device:    r.Device,
		SRKName:   srkName,
		Public:    *pub,
		Private:   *priv,
		PCRs:      r.PCRs,
		PCRDigest: digest,
	}
	if err := s.validate(); err != nil {
		return nil, err
	}
	return s, nil
}

// unmarshalExact unmarshals a T that must take up all of b, in its canonical
// encoding.
func unmarshalExact[T tpm2.Marshallable, P interface {
	*T
	tpm2.Unmarshallable
}](b []byte) (*T, error) {
	v, err := tpm2.Unmarshal[T, P](b)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(tpm2.Marshal(*v), b) {
		return nil, errors.New("not canonical")
	}
	return v, nil
}

func (s *State) validate() error {
	if len(s.Device) > 4096 {
		return perr("device path too long")
	}
	if len(s.SRKName) != 2+sha256.Size || s.SRKName[0] != 0 || s.SRKName[1] != byte(tpm2.TPMAlgSHA256) {
		return perr("srk_name is not a SHA-256 Name")
	}
	if n := len(s.Private.Buffer); n == 0 || n > maxPrivate {
		return perr("private has %d bytes", n)
	}
	if err := ValidPCRs(s.PCRs); err != nil {
		return perr("%v", err)
	}
	if len(s.PCRs) == 0 && s.PCRDigest != nil {
		return perr("pcr_digest without pcrs")
	}
	var policy []byte
	if len(s.PCRs) > 0 {
		if len(s.PCRDigest) != sha256.Size {
			return perr("pcr_digest is not a SHA-256 digest")
		}
		var err error
		if policy, err = PCRPolicy(s.PCRs, s.PCRDigest); err != nil {
			return perr("%v", err)
		}
	}
	pub, err := s.Public.Contents()
	if err != nil {
		return perr("public is not a TPMT_PUBLIC")
	}
	if !bytes.Equal(pub.AuthPolicy.Buffer, policy) {
		return perr("the key's policy does not match pcrs and pcr_digest")
	}
	// Every field but the point must be the template's, byte for byte.
	// (Field by field is not an option: go-tpm v0.9.8's
	// TPMUAsymScheme.ECDH() checks for the RSASSA selector and always fails.)
	want := KeyTemplate(policy)
	want.Unique = pub.Unique
	if !bytes.Equal(tpm2.Marshal(*pub), tpm2.Marshal(want)) {
		return perr("public is not an ECDH-only P-256 key fixed to its TPM")
	}
	parms, err := pub.Parameters.ECCDetail()
	if err != nil {
		return perr("public has no ECC parameters")
	}
	point, err := pub.Unique.ECC()
	if err != nil {
		return perr("public has no ECC point")
	}
	if len(point.X.Buffer) != 32 || len(point.Y.Buffer) != 32 {
		return perr("public point is not a P-256 point")
	}
	key, err := tpm2.ECDHPub(parms, point)
	if err != nil {
		return perr("public point is not on P-256")
	}
	name, err := tpm2.ObjectName(pub)
	if err != nil {
		return perr("public has no Name")
	}
	s.key, s.keyName = key, name.Buffer
	return nil
}

// Key is the public half of the TPM's ECDH key.
func (s *State) Key() *ecdh.PublicKey { return s.key }

// KeyName is the TPM Name of the ECDH key, computed from Public.
func (s *State) KeyName() tpm2.TPM2BName { return tpm2.TPM2BName{Buffer: slices.Clone(s.keyName)} }

// ValidPCRs checks a PCR list: indexes 0 to MaxPCR, ascending, no repeats.
func ValidPCRs(pcrs []int) error {
	for i, p := range pcrs {
		if p < 0 || p > MaxPCR {
			return fmt.Errorf("PCR %d out of range (0 to %d)", p, MaxPCR)
		}
		if i > 0 && p <= pcrs[i-1] {
			return errors.New("PCRs not in ascending order or repeated")
		}
	}
	return nil
}

// Selection is the SHA-256 PCR selection of pcrs.
func Selection(pcrs []int) tpm2.TPMLPCRSelection {
	u := make([]uint, len(pcrs))
	for i, p := range pcrs {
		u[i] = uint(p)
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash:      tpm2.TPMAlgSHA256,
		PCRSelect: tpm2.PCClientCompatible.PCRs(u...),
	}}}
}

// PCRPolicy is the policy digest of TPM2_PolicyPCR over pcrs (SHA-256 bank)
// with the given PCR digest, in a SHA-256 policy session.
func PCRPolicy(pcrs []int, pcrDigest []byte) ([]byte, error) {
	if len(pcrs) == 0 {
		return nil, errors.New("no PCRs")
	}
	calc, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		return nil, err
	}
	cmd := tpm2.PolicyPCR{PcrDigest: tpm2.TPM2BDigest{Buffer: pcrDigest}, Pcrs: Selection(pcrs)}
	if err := cmd.Update(calc); err != nil {
		return nil, err
	}
	return calc.Hash().Digest, nil
}

// KeyTemplate is the template of the seal's key: ECC P-256, ECDH only
// (decrypt, not sign, not restricted), fixed to its TPM and parent, created
// inside the TPM. With a policy, only that policy authorizes it; without, its
// (empty) auth value does. noDA: it has no secret auth value to guess, and a
// failed HMAC must not count towards locking out the TPM's other users.
func KeyTemplate(policy []byte) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:            true,
			FixedParent:         true,
			SensitiveDataOrigin: true,
			UserWithAuth:        len(policy) == 0,
			NoDA:                true,
			Decrypt:             true,
		},
		AuthPolicy: tpm2.TPM2BDigest{Buffer: policy},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme: tpm2.TPMTECCScheme{
				Scheme: tpm2.TPMAlgECDH,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDH, &tpm2.TPMSKeySchemeECDH{
					HashAlg: tpm2.TPMAlgSHA256,
				}),
			},
			CurveID: tpm2.TPMECCNistP256,
			KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		// TPM2_Create fills in the point.
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
	}
}
