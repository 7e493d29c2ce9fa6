"""De-identify a DICOM dataset before anything of it is stored.

Follows the DICOM PS3.15 Annex E *Basic Application Level Confidentiality
Profile* as far as it applies to a single radiograph, with the *Retain
Longitudinal Temporal Information with Modified Dates* option (dates are
shifted by a per-patient offset instead of removed, so follow-up order
survives):

- attributes of Table E.1-1 that identify people, places or requests are
  removed (X) or emptied (Z); the patient's name and ID are replaced (D) by a
  pseudonym, a keyed hash (HMAC-SHA256 with ``CXR_PSEUDONYM_KEY``) of the
  original patient ID, so the same patient gets the same reference without
  the ID being stored anywhere;
- UIDs are replaced (U) by new ones derived from the same key, consistently
  within and across uploads (a study's images stay one study);
- every date (DA, DT) is shifted back by 1 to 3650 days, the same for one
  patient; the birth date is removed;
- private tags, overlays and curves (groups 50xx, 60xx) are removed;
- nested sequences are walked, and any person name (PN) left is emptied;
- PatientIdentityRemoved = YES, DeidentificationMethod and its code
  sequence record what was done; the file preamble and meta header are
  rebuilt, so nothing of the original header survives outside the dataset.

Pixel data are kept as they are; an image that declares burned-in
annotations is refused before this point (apps.cases.validation).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import io

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, generate_uid

# LO: at most 64 characters. The code sequence below names the profile and option in full.
METHOD = "PS3.15 Basic Profile, Modified Dates option (cxrplatform v1)"
PSEUDONYM_PREFIX = "PX-"

# Table E.1-1 actions for attributes a chest radiograph may carry.
# D: replaced with a dummy (the pseudonym).
REPLACE = {"PatientName", "PatientID"}
# Z: kept, emptied (type 2 attributes).
EMPTY = {
    "AccessionNumber", "ContentCreatorName", "FillerOrderNumberImagingServiceRequest",
    "PatientSex", "PlacerOrderNumberImagingServiceRequest", "ReferringPhysicianName",
    "StudyID", "RequestingPhysician", "VerifyingObserverName",
}  # fmt: skip
# X: removed.
REMOVE = {
    "AcquisitionComments", "AcquisitionDeviceProcessingDescription",
    "ActualHumanPerformersSequence", "AdditionalPatientHistory", "AdmissionID",
    "AdmittingDate", "AdmittingDiagnosesCodeSequence", "AdmittingDiagnosesDescription",
    "AdmittingTime", "Allergies", "AuthorObserverSequence", "BranchOfService",
    "CommentsOnThePerformedProcedureStep", "ConfidentialityConstraintOnPatientDataDescription",
    "ContributionDescription", "CountryOfResidence", "CurrentPatientLocation",
    "CustodialOrganizationSequence", "DataSetTrailingPadding", "DerivationDescription",
    "DeviceSerialNumber", "DigitalSignaturesSequence", "DischargeDiagnosisDescription",
    "DistributionAddress", "DistributionName", "EthnicGroup", "FrameComments", "GantryID",
    "GeneratorID", "HumanPerformerName", "HumanPerformerOrganization", "IconImageSequence",
    "IdentifyingComments", "ImageComments", "ImagePresentationComments",
    "ImagingServiceRequestComments", "Impressions", "InstitutionAddress",
    "InstitutionalDepartmentName", "InstitutionCodeSequence", "InstitutionName",
    "IssuerOfAdmissionID", "IssuerOfPatientID", "LastMenstrualDate", "MedicalAlerts",
    "MedicalRecordLocator", "MilitaryRank", "ModifiedAttributesSequence", "ModifyingDeviceID",
    "NameOfPhysiciansReadingStudy", "NamesOfIntendedRecipientsOfResults", "Occupation",
    "OperatorIdentificationSequence", "OperatorsName", "OrderCallbackPhoneNumber",
    "OrderEnteredBy", "OrderEntererLocation", "OriginalAttributesSequence",
    "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "ParticipantSequence",
    "PatientAddress", "PatientAge", "PatientBirthDate", "PatientBirthName", "PatientBirthTime",
    "PatientComments", "PatientInsurancePlanCodeSequence", "PatientMotherBirthName",
    "PatientPrimaryLanguageCodeSequence", "PatientReligiousPreference", "PatientSexNeutered",
    "PatientSize", "PatientState", "PatientTelecomInformation", "PatientTelephoneNumbers",
    "PatientTransportArrangements", "PatientWeight", "PerformedLocation",
    "PerformedProcedureStepDescription", "PerformedProcedureStepID",
    "PerformingPhysicianIdentificationSequence", "PerformingPhysicianName", "PersonAddress",
    "PersonName", "PersonTelephoneNumbers", "PhysicianApprovingInterpretation",
    "PhysiciansOfRecord", "PhysiciansOfRecordIdentificationSequence",
    "PhysiciansReadingStudyIdentificationSequence", "PlateID", "PreMedication",
    "PregnancyStatus", "ProtocolName", "ReasonForStudy", "ReasonForTheImagingServiceRequest",
    "ReferencedPatientAliasSequence", "ReferencedPatientSequence",
    "ReferringPhysicianAddress", "ReferringPhysicianIdentificationSequence",
    "ReferringPhysicianTelephoneNumbers", "RegionOfResidence", "RequestAttributesSequence",
    "RequestedContrastAgent", "RequestedProcedureComments", "RequestedProcedureDescription",
    "RequestedProcedureID", "RequestedProcedureLocation", "RequestingService",
    "ResponsibleOrganization", "ResponsiblePerson", "ResultsComments",
    "ResultsDistributionListSequence", "ResultsIDIssuer", "ScheduledHumanPerformersSequence",
    "ScheduledPatientInstitutionResidence", "ScheduledPerformingPhysicianIdentificationSequence",
    "ScheduledPerformingPhysicianName", "ScheduledProcedureStepDescription",
    "SeriesDescription", "ServiceEpisodeDescription", "ServiceEpisodeID", "SmokingStatus",
    "SpecialNeeds", "StationName", "StudyComments", "StudyDescription", "TextComments",
    "TextString", "TopicAuthor", "TopicKeywords", "TopicSubject", "TopicTitle",
    "VerifyingObserverIdentificationCodeSequence", "VerifyingObserverSequence",
    "VerifyingOrganization", "VisitComments", "InstanceCreatorUID", "StorageMediaFileSetUID",
    "MediaStorageSOPInstanceUID", "DeviceUID",
}  # fmt: skip
KEEP_UID = {"SOPClassUID", "TransferSyntaxUID", "ReferencedSOPClassUID", "CodingSchemeUID"}


def _tags(keywords: set[str]) -> set[int]:
    return {tag for tag in (tag_for_keyword(k) for k in keywords) if tag is not None}


REPLACE_TAGS, EMPTY_TAGS, REMOVE_TAGS = _tags(REPLACE), _tags(EMPTY), _tags(REMOVE)


def _keyed(key: str, purpose: str, value: str) -> str:
    return hmac.new(key.encode(), f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()


def pseudonym_for(patient_id: str, *, key: str) -> str:
    """The pseudonymous patient reference for a patient ID ("" for no ID)."""
    patient_id = patient_id.strip()
    if not patient_id:
        return ""
    return PSEUDONYM_PREFIX + _keyed(key, "patient", patient_id)[:20].upper()


def _shift_date(value: str, days: int) -> str:
    text = value.strip()
    if len(text) < 8 or not text[:8].isdigit():
        return ""  # a date that cannot be shifted is removed
    try:
        shifted = dt.date(int(text[:4]), int(text[4:6]), int(text[6:8])) - dt.timedelta(days)
    except ValueError:
        return ""
    return shifted.strftime("%Y%m%d") + text[8:]


def _clean(dataset: Dataset, *, key: str, pseudonym: str, days: int) -> None:
    for element in list(dataset):
        tag = int(element.tag)
        group = tag >> 16
        if (
            element.tag.is_private
            or tag in REMOVE_TAGS
            or 0x5000 <= group <= 0x50FF
            or (0x6000 <= group <= 0x60FF and (tag & 0xFFFF) in (0x3000, 0x4000))
            or element.VR == "UN"
        ):
            del dataset[element.tag]
            continue
        if tag in REPLACE_TAGS:
            element.value = pseudonym
        elif tag in EMPTY_TAGS:
            element.value = None
        elif element.VR == "SQ":
            for item in element.value or []:
                _clean(item, key=key, pseudonym=pseudonym, days=days)
        elif element.VR == "PN":
            element.value = None
        elif element.VR in ("DA", "DT") and element.value:
            if element.VM > 1:
                element.value = [_shift_date(str(v), days) for v in element.value]
            else:
                element.value = _shift_date(str(element.value), days)
        elif element.VR == "UI" and element.value and element.keyword not in KEEP_UID:
            element.value = _new_uid(key, str(element.value))


def _new_uid(key: str, uid: str) -> str:
    """A 2.25 (UUID-derived) UID from a keyed hash: the same original UID always
    maps to the same new one, and the original cannot be recovered without the key."""
    return "2.25." + str(int(_keyed(key, "uid", uid)[:32], 16))


def deidentify(dataset: Dataset, *, key: str) -> tuple[bytes, str]:
    """De-identify ``dataset`` in place; return (the DICOM file's bytes, the pseudonym)."""
    original_id = str(dataset.get("PatientID") or "")
    pseudonym = pseudonym_for(original_id, key=key)
    days = 1 + int(_keyed(key, "dates", original_id or "no-id")[:8], 16) % 3650
    _clean(dataset, key=key, pseudonym=pseudonym, days=days)
    dataset.PatientIdentityRemoved = "YES"
    dataset.LongitudinalTemporalInformationModified = "MODIFIED"
    dataset.DeidentificationMethod = METHOD
    dataset.DeidentificationMethodCodeSequence = Sequence(
        [_code("113100", "Basic Application Confidentiality Profile"),
         _code("113107", "Retain Longitudinal Temporal Information Modified Dates Option")]
    )  # fmt: skip
    dataset.PatientName = pseudonym
    dataset.PatientID = pseudonym

    old_meta = dataset.file_meta
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dataset.get("SOPClassUID") or old_meta.get(
        "MediaStorageSOPClassUID"
    )
    if "SOPInstanceUID" not in dataset:
        dataset.SOPInstanceUID = generate_uid()
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    meta.TransferSyntaxUID = old_meta.TransferSyntaxUID
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    dataset.file_meta = meta
    dataset.preamble = b"\x00" * 128  # a preamble may hold a TIFF header with identifiers

    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), pseudonym


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item
