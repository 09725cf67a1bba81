//! Which serverless platform the process runs on, from the variables each one sets
//! (`REALM_PLATFORM` overrides): AWS Lambda sets `AWS_LAMBDA_RUNTIME_API`; Cloud Run and
//! Knative both set `K_SERVICE`, and only Knative runs in a Kubernetes pod
//! (`KUBERNETES_SERVICE_HOST`); Azure Container Apps sets `CONTAINER_APP_NAME`.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    Local,
    Lambda,
    CloudRun,
    ContainerApps,
    Knative,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("REALM_PLATFORM={0:?} is not one of auto, local, lambda, cloud-run, container-apps, knative")]
pub struct UnknownPlatform(pub String);

impl Platform {
    pub fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Lambda => "lambda",
            Self::CloudRun => "cloud-run",
            Self::ContainerApps => "container-apps",
            Self::Knative => "knative",
        }
    }

    /// The platform named by `REALM_PLATFORM`, or detected when it is `auto` or unset.
    pub fn detect(var: impl Fn(&str) -> Option<String>) -> Result<(Self, &'static str), UnknownPlatform> {
        let set = |name: &str| var(name).is_some_and(|v| !v.is_empty());
        match var("REALM_PLATFORM").unwrap_or_default().as_str() {
            "" | "auto" => {}
            "local" => return Ok((Self::Local, "REALM_PLATFORM")),
            "lambda" => return Ok((Self::Lambda, "REALM_PLATFORM")),
            "cloud-run" => return Ok((Self::CloudRun, "REALM_PLATFORM")),
            "container-apps" => return Ok((Self::ContainerApps, "REALM_PLATFORM")),
            "knative" => return Ok((Self::Knative, "REALM_PLATFORM")),
            other => return Err(UnknownPlatform(other.to_string())),
        }
        Ok(if set("AWS_LAMBDA_RUNTIME_API") {
            (Self::Lambda, "AWS_LAMBDA_RUNTIME_API")
        } else if set("CONTAINER_APP_NAME") {
            (Self::ContainerApps, "CONTAINER_APP_NAME")
        } else if set("K_SERVICE") && set("KUBERNETES_SERVICE_HOST") {
            (Self::Knative, "K_SERVICE in a Kubernetes pod")
        } else if set("K_SERVICE") {
            (Self::CloudRun, "K_SERVICE")
        } else {
            (Self::Local, "no platform variables")
        })
    }

    /// Logs in Cloud Logging's JSON shape (`severity`, `message`, trace) where Google collects
    /// them.
    pub fn cloud_logging(self) -> bool {
        self == Self::CloudRun
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detect(vars: &[(&str, &str)]) -> Result<Platform, UnknownPlatform> {
        Platform::detect(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())).map(|(p, _)| p)
    }

    #[test]
    fn each_platform_by_its_variables() {
        assert_eq!(detect(&[]), Ok(Platform::Local));
        assert_eq!(detect(&[("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001")]), Ok(Platform::Lambda));
        assert_eq!(detect(&[("K_SERVICE", "chat")]), Ok(Platform::CloudRun));
        assert_eq!(detect(&[("K_SERVICE", "chat"), ("KUBERNETES_SERVICE_HOST", "10.0.0.1")]), Ok(Platform::Knative));
        assert_eq!(detect(&[("CONTAINER_APP_NAME", "chat")]), Ok(Platform::ContainerApps));
        assert_eq!(detect(&[("REALM_PLATFORM", "knative")]), Ok(Platform::Knative));
        assert_eq!(detect(&[("REALM_PLATFORM", "auto"), ("K_SERVICE", "x")]), Ok(Platform::CloudRun));
        assert_eq!(detect(&[("REALM_PLATFORM", "heroku")]), Err(UnknownPlatform("heroku".into())));
    }
}
